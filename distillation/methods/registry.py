"""Method name → its `Method` (one entry per module of this package)."""

from __future__ import annotations

from distillation.config import METHODS
from distillation.methods.base import Method
from distillation.methods.on_policy import OnPolicyMethod
from distillation.methods.sequence import SequenceMethod

_METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Method, SequenceMethod,
                                                               OnPolicyMethod)}
assert tuple(_METHODS) == METHODS


def method_for(name: str) -> Method:
    """A fresh `Method` for one run (it keeps what its stages did, for the report)."""
    try:
        return _METHODS[name]()
    except KeyError:
        raise ValueError(f"distillation.method must be one of {', '.join(METHODS)}, "
                         f"got {name!r}") from None
