"""The wire format of models, kept apart from the table."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    task: str
    source: Literal["builtin", "uploaded", "distilled", "finetuned"]
    owned_by: str
    source_job: str | None = None
    filename: str | None = None
    parameters: int
    size_bytes: int
    labels: list[str] | None = None
    report: dict[str, Any] | None = None
    created_at: int
    description: str | None = None  # what a built-in model is


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
