"""The contract's list envelope: `{"object": "list", "data": [...], "has_more": ...}`."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, and_, or_

T = TypeVar("T")


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def page(items: list[T], *, limit: int, ids: list[str]) -> ListResponse[T]:
    """Cut a list fetched with `limit + 1` rows into a page and its `has_more` flag."""
    has_more = len(items) > limit
    items, ids = items[:limit], ids[:limit]
    return ListResponse[T](
        data=items,
        has_more=has_more,
        first_id=ids[0] if ids else None,
        last_id=ids[-1] if ids else None,
    )


def newest_first(query: Select[Any], table: Any, *, after: Any | None) -> Select[Any]:
    """Keyset paging, newest first: the rows after the cursor row in (created_at, id) order."""
    if after is not None:
        query = query.where(
            or_(
                table.created_at < after.created_at,
                and_(table.created_at == after.created_at, table.id < after.id),
            )
        )
    return query.order_by(table.created_at.desc(), table.id.desc())
