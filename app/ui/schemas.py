"""What the dashboard's own JSON route answers."""

from __future__ import annotations

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    markdown: str | None  # None: the model has no README.md (an uploaded teacher, a built-in)
    html: str | None  # the markdown rendered with raw HTML escaped
