"""Queries on the files table; every read is scoped to one tenant."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.files.tables import FileRow
from app.jobs.status import ACTIVE as ACTIVE_JOB_STATUSES
from app.jobs.tables import JobRow
from app.kit.pagination import newest_first


def get_for_tenant(session: Session, *, tenant_id: str, file_id: str) -> FileRow | None:
    """The tenant's file, or None: another tenant's id looks exactly like a missing one."""
    row = session.get(FileRow, file_id)
    if row is None or row.tenant_id != tenant_id:
        return None
    return row


def list_for_tenant(
    session: Session,
    *,
    tenant_id: str,
    limit: int,
    after: FileRow | None = None,
    purpose: str | None = None,
) -> list[FileRow]:
    """Up to `limit` files, newest first, starting after the cursor row."""
    query = select(FileRow).where(FileRow.tenant_id == tenant_id)
    if purpose is not None:
        query = query.where(FileRow.purpose == purpose)
    query = newest_first(query, FileRow, after=after).limit(limit)
    return list(session.scalars(query))


def active_jobs_using(session: Session, *, tenant_id: str, file_id: str) -> list[str]:
    """Ids of the tenant's queued, running or cancelling jobs that read this file."""
    return list(session.scalars(
        select(JobRow.id).where(
            JobRow.tenant_id == tenant_id, JobRow.status.in_(ACTIVE_JOB_STATUSES),
            or_(JobRow.training_file_id == file_id, JobRow.validation_file_id == file_id,
                JobRow.transfer_file_id == file_id, JobRow.examples_file_id == file_id),
        )
    ))
