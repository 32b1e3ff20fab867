"""Queries on the models table; every read is scoped to one tenant."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.jobs.status import ACTIVE as ACTIVE_JOB_STATUSES
from app.jobs.tables import JobRow
from app.models.tables import ModelRow


def get_for_tenant(session: Session, *, tenant_id: str, model_id: str) -> ModelRow | None:
    """The tenant's model, or None: another tenant's id looks exactly like a missing one."""
    row = session.get(ModelRow, model_id)
    if row is None or row.tenant_id != tenant_id:
        return None
    return row


def list_for_tenant(session: Session, *, tenant_id: str) -> list[ModelRow]:
    """The tenant's models, newest first."""
    query = (
        select(ModelRow)
        .where(ModelRow.tenant_id == tenant_id)
        .order_by(ModelRow.created_at.desc(), ModelRow.id.desc())
    )
    return list(session.scalars(query))


def active_jobs_using(session: Session, *, tenant_id: str, model_id: str) -> list[str]:
    """Ids of the tenant's unfinished jobs whose teacher or student is this model."""
    return list(session.scalars(
        select(JobRow.id).where(
            JobRow.tenant_id == tenant_id, JobRow.status.in_(ACTIVE_JOB_STATUSES),
            or_(JobRow.teacher_model_id == model_id, JobRow.student_model_id == model_id),
        )
    ))
