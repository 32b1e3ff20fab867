"""Label names and class ids of classification data.

Label names: the teacher's head decides when it has named labels (its order is the logits'
order); otherwise they are the data's labels, sorted numerically when all are whole numbers and
alphabetically otherwise. Pure Python: the API checks a request's labels with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

_GENERIC_LABEL = re.compile(r"^LABEL_(\d+)$")


def label_text(value: Any) -> str:
    """A label value as text: 1, 1.0 and "1" are all "1"."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def sorted_labels(values: Iterable[Any]) -> list[str]:
    """Distinct labels, numerically sorted when all are whole numbers, else alphabetically."""
    names = {label_text(v) for v in values}
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def label_index(data_labels: Iterable[Any], teacher_labels: Sequence[str] | None) -> dict[str, int]:
    """{label text: class id}, following the teacher's head when it has one.

    Whole-number labels index a head whose labels are names (SST-2's 0/1 on negative/positive)
    or generic (LABEL_0, LABEL_1); other labels must be among the head's names.
    """
    names = sorted_labels(data_labels)
    if not teacher_labels:
        return {name: i for i, name in enumerate(names)}
    known = {name: i for i, name in enumerate(teacher_labels)}
    if all(n in known for n in names):
        return {n: known[n] for n in names}
    numeric = all(re.fullmatch(r"\d+", n) for n in names)
    if numeric and all(int(n) < len(teacher_labels) for n in names):
        return {n: int(n) for n in names}
    unknown = [n for n in names if n not in known]
    generic = all(_GENERIC_LABEL.match(t) for t in teacher_labels)
    hint = (f"use class numbers 0..{len(teacher_labels) - 1}" if generic
            else f"the teacher knows {', '.join(teacher_labels)}")
    raise ValueError(
        f"the data has labels the teacher's classification head does not know: "
        f"{', '.join(unknown[:10])}; {hint}"
    )


def output_label_names(index: dict[str, int], teacher_labels: Sequence[str] | None) -> list[str]:
    """The names the student's head gets (a generic teacher head takes the data's numbers)."""
    if not teacher_labels:
        return [name for name, _ in sorted(index.items(), key=lambda kv: kv[1])]
    if all(_GENERIC_LABEL.match(t) for t in teacher_labels):
        by_id = {i: name for name, i in index.items()}
        return [by_id.get(i, t) for i, t in enumerate(teacher_labels)]
    return list(teacher_labels)
