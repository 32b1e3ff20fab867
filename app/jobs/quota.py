"""Jobs one tenant may have queued at once: past `max_queued_jobs_per_tenant`, 429."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.tables import TenantRow
from app.jobs.status import JobStatus
from app.jobs.tables import JobRow
from app.kit.errors import TooManyRequests
from app.settings import Settings


def check_queued_jobs(session: Session, *, tenant_id: str, settings: Settings,
                      lock: bool = False) -> None:
    """429 when the tenant already has its limit of queued jobs.

    `lock` takes the tenant's row (FOR NO KEY UPDATE, which leaves inserts that reference the
    tenant alone) until the transaction ends, so that two creates cannot both see room for one
    more; take it just before inserting the job, after the slow checks.
    """
    if lock:
        session.execute(select(TenantRow.id).where(TenantRow.id == tenant_id)
                        .with_for_update(key_share=True))
    limit = settings.max_queued_jobs_per_tenant
    queued = session.scalar(select(func.count()).select_from(JobRow).where(
        JobRow.tenant_id == tenant_id, JobRow.status == JobStatus.QUEUED)) or 0
    if queued >= limit:
        raise TooManyRequests(
            f"This tenant has {queued} jobs queued; the limit is {limit} "
            "(DISTILL_MAX_QUEUED_JOBS_PER_TENANT): wait until some start, or cancel some.",
            code="too_many_queued_jobs",
        )
