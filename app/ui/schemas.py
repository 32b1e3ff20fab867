"""What the dashboard's own JSON route answers."""

from __future__ import annotations

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    markdown: str | None  # None: the model has no README.md (an uploaded teacher, a built-in)
    html: str | None  # the markdown rendered with raw HTML escaped
    truncated: bool = False  # the README was longer than DISTILL_CARD_MAX_BYTES: its start only
    size_bytes: int | None = None  # the whole README's size
