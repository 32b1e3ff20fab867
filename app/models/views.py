"""One view of a model whether it is built in (code) or registered (a row), with its directory."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.models.builtin import BuiltinModel, GgufBuiltin
from app.models.schemas import ModelObject
from app.models.tables import ModelRow
from app.models.weights import weight_stats
from app.settings import Settings
from app.storage.local import dir_mtime_ns
from distillation.models.info import ModelInfo, inspect_model

SYSTEM_OWNER = "system"


@dataclass
class ModelView:
    id: str
    task: str
    source: str  # "builtin" | "uploaded" | "distilled" | "finetuned"
    owned_by: str
    path: Path  # the local directory; with a remote store, use `service.local_model_path`
    parameters: int
    size_bytes: int
    labels: list[str] | None
    report: dict[str, Any] | None
    source_job: str | None
    filename: str | None
    created_at: int
    location: str = ""  # where the files are stored: `path`, or an object-store URL
    description: str | None = None  # built-in models: what they are

    def __post_init__(self) -> None:
        self.location = self.location or str(self.path)

    @property
    def is_builtin(self) -> bool:
        return self.source == "builtin"

    def to_object(self) -> ModelObject:
        return ModelObject(
            id=self.id,
            task=self.task,
            source=self.source,  # type: ignore[arg-type]
            owned_by=self.owned_by,
            source_job=self.source_job,
            filename=self.filename,
            parameters=self.parameters,
            size_bytes=self.size_bytes,
            labels=self.labels,
            report=self.report,
            created_at=self.created_at,
            description=self.description,
        )


@lru_cache(maxsize=64)
def _inspect(path: str, _stamp: int) -> ModelInfo:
    return inspect_model(path)


def inspect_cached(path: Path) -> ModelInfo:
    """`inspect_model`, cached until the directory changes (ValueError when not a model)."""
    return _inspect(str(path.resolve()), dir_mtime_ns(path))


def from_builtin(model: BuiltinModel, settings: Settings) -> ModelView:
    """A built-in model as it is on disk; one still to be converted (a GGUF built-in before its
    first use) as its file's header describes it, without converting it."""
    path = model.directory(settings)
    if isinstance(model, GgufBuiltin) and not model.is_ready(settings):
        task, labels = model.task, None
        parameters, size_bytes = model.converted_size()
    else:
        info = inspect_cached(path)
        stats = weight_stats(path)
        task, labels = info.task, info.labels
        parameters, size_bytes = stats.parameters, stats.size_bytes
    return ModelView(
        id=model.id,
        task=task,
        source="builtin",
        owned_by=SYSTEM_OWNER,
        path=path,
        parameters=parameters,
        size_bytes=size_bytes,
        labels=labels,
        report=None,
        source_job=None,
        filename=None,
        created_at=model.created_at,
        description=model.description,
    )


def from_row(row: ModelRow) -> ModelView:
    return ModelView(
        id=row.id,
        task=row.task,
        source=row.source,
        owned_by=row.tenant_id,
        path=Path(row.path),
        location=row.path,
        parameters=row.parameters,
        size_bytes=row.size_bytes,
        labels=[str(label) for label in row.labels] if row.labels is not None else None,
        report=row.report,
        source_job=row.source_job,
        filename=row.filename,
        created_at=int(row.created_at),
    )
