"""Queries on jobs, their events and idempotency keys."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.jobs.tables import IdempotencyKeyRow, JobEventRow, JobRow
from app.kit.clock import now
from app.kit.pagination import newest_first

EVENT_PREFIX = "event-"


def get_for_tenant(session: Session, *, tenant_id: str, job_id: str) -> JobRow | None:
    """This tenant's job, or None: another tenant's id reads exactly like a missing one."""
    return session.scalar(select(JobRow).where(JobRow.id == job_id, JobRow.tenant_id == tenant_id))


def list_for_tenant(
    session: Session, *, tenant_id: str, limit: int, after: JobRow | None, status: str | None
) -> list[JobRow]:
    """Newest first; `after` is the last job of the previous page."""
    query = select(JobRow).where(JobRow.tenant_id == tenant_id)
    if status:
        query = query.where(JobRow.status == status)
    query = newest_first(query, JobRow, after=after).limit(limit)
    return list(session.scalars(query))


def add_event(
    session: Session,
    *,
    job_id: str,
    message: str,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEventRow:
    event = JobEventRow(
        job_id=job_id, created_at=now(), level=level, type=type, message=message[:4000], data=data
    )
    session.add(event)
    return event


def event_seq(event_id: str) -> int | None:
    """The sequence number inside an event id such as `event-42`, or None if malformed."""
    digits = event_id.removeprefix(EVENT_PREFIX)
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 19 else None


def list_events(session: Session, *, job_id: str, after: int | None, limit: int) -> list[JobEventRow]:
    """Oldest first, so that polling with `after=<last id seen>` yields only what is new."""
    query = select(JobEventRow).where(JobEventRow.job_id == job_id)
    if after is not None:
        query = query.where(JobEventRow.seq > after)
    return list(session.scalars(query.order_by(JobEventRow.seq).limit(limit)))


def get_idempotency_key(session: Session, *, tenant_id: str, key: str) -> IdempotencyKeyRow | None:
    return session.scalar(
        select(IdempotencyKeyRow).where(
            IdempotencyKeyRow.tenant_id == tenant_id, IdempotencyKeyRow.key == key
        )
    )


# Job columns that are not in the job object: a change to these alone (a heartbeat every few
# seconds) wakes no live stream. Any other column, a new one included, wakes them.
_NOT_IN_JOB_OBJECT = {"request", "tenant_id", "heartbeat_at", "enqueued_at", "worker_id"}


def change_marks(session: Session, *, job_ids: Collection[str]) -> dict[str, tuple[Any, ...]]:
    """For each job that still exists, the values that change whenever its job object does or an
    event is added (its shown columns and its last event's seq), in one query for all of them."""
    shown = [c for c in JobRow.__table__.c if c.name not in _NOT_IN_JOB_OBJECT]
    last_seq = (select(func.max(JobEventRow.seq)).where(JobEventRow.job_id == JobRow.id)
                .scalar_subquery())
    rows = session.execute(select(JobRow.id, *shown, last_seq).where(JobRow.id.in_(job_ids)))
    return {row[0]: tuple(row[1:]) for row in rows}
