"""Sharing the workers between tenants: a limit on the jobs one tenant has running at once
(`max_running_jobs_per_tenant`), and the order in which a woken worker picks a job.

A wake-up message wakes a worker for its queue, not for the job it names: the worker claims the
best claimable queued job of that queue (`next_job`): among the tenants under the limit, the one
with the fewest jobs running first, then the oldest job. Each claim takes one message and each
queued job sent one, so a queue never has fewer messages than jobs a worker may claim, except
where the limit held a job back: its message was taken without a claim. Such a job is woken
again when one of its tenant's jobs stops running (`held_back`), and the reconciler leaves it
alone while its tenant is at the limit (`under_limit`), then re-sends it as any other.

The limit holds under racing workers because a claim locks the tenant's row before it counts
the tenant's running jobs (`lock_tenant`): a second claim for the tenant waits for the first
one's commit and then counts it. SQLite (embedded mode, one worker) has no row locks and needs
none.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Subquery, func, or_, select
from sqlalchemy.orm import Session

from app.auth.tables import TenantRow
from app.jobs import routing
from app.jobs.status import IN_PROGRESS, JobStatus
from app.jobs.tables import JobRow
from app.settings import Settings


def _running_counts() -> Subquery:
    return (select(JobRow.tenant_id, func.count().label("running"))
            .where(JobRow.status.in_(IN_PROGRESS)).group_by(JobRow.tenant_id).subquery())


def _with_running(running: Subquery) -> ColumnElement[int]:
    return func.coalesce(running.c.running, 0)


def lock_tenant(session: Session, *, tenant_id: str) -> None:
    """Hold the tenant's row until the transaction ends (FOR NO KEY UPDATE: a concurrent claim for
    the tenant, or a job creation's quota check, waits; inserting its jobs does not)."""
    session.execute(select(TenantRow.id).where(TenantRow.id == tenant_id)
                    .with_for_update(key_share=True))


def running_jobs(session: Session, *, tenant_id: str) -> int:
    """The tenant's jobs running or cancelling now."""
    return session.scalar(select(func.count()).select_from(JobRow).where(
        JobRow.tenant_id == tenant_id, JobRow.status.in_(IN_PROGRESS))) or 0


def next_job(session: Session, *, queue: str, max_running: int,
             also: str | None = None) -> str | None:
    """The queued job of `queue` (or `also`, the job the wake-up named) a worker should claim
    next: its tenant under `max_running` (0: no limit), the fewest running first, the oldest
    job first; None when there is none."""
    running = _running_counts()
    in_queue = func.coalesce(JobRow.queue, routing.DEFAULT_QUEUE) == queue
    statement = (
        select(JobRow.id)
        .outerjoin(running, running.c.tenant_id == JobRow.tenant_id)
        .where(JobRow.status == JobStatus.QUEUED,
               or_(in_queue, JobRow.id == also) if also is not None else in_queue)
        .order_by(_with_running(running), JobRow.created_at, JobRow.id)
        .limit(1)
    )
    if max_running:
        statement = statement.where(_with_running(running) < max_running)
    return session.scalar(statement)


def under_limit(max_running: int) -> ColumnElement[bool] | None:
    """A condition on `JobRow` rows: their tenant has fewer than `max_running` jobs running (None
    when there is no limit)."""
    if not max_running:
        return None
    running = _running_counts()
    return JobRow.tenant_id.not_in(
        select(running.c.tenant_id).where(running.c.running >= max_running))


def held_back(session: Session, *, tenant_id: str, settings: Settings) -> dict[str, str]:
    """Where the tenant's queued jobs may wait on the limit, now that one of its jobs stopped
    running: {queue: its oldest queued job there}; empty when there is no limit or the tenant is
    still at it."""
    limit = settings.max_running_jobs_per_tenant
    if not limit or running_jobs(session, tenant_id=tenant_id) >= limit:
        return {}
    oldest: dict[str, str] = {}
    for job in session.scalars(select(JobRow).where(
            JobRow.tenant_id == tenant_id, JobRow.status == JobStatus.QUEUED)
            .order_by(JobRow.created_at, JobRow.id)):
        oldest.setdefault(routing.queue_for(job, settings=settings), job.id)
    return oldest
