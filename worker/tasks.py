"""Celery tasks: each receives only a job id; the work and the state changes live elsewhere."""

from __future__ import annotations

from sqlalchemy import select

from app.jobs.tables import JobRow
from app.kit.db import session_scope
from app.settings import Settings, get_settings
from worker.celery_app import celery_app


@celery_app.task(name="worker.tasks.run_job", queue="training")
def run_job(job_id: str) -> None:
    """Claim the job and run it; a duplicate or late message finds it claimed and does nothing."""
    settings = get_settings()
    # A message for a job that is no longer queued (cancelled, or a duplicate) is dropped before
    # the training core (torch) is imported: stale messages cost the queue milliseconds.
    if not is_queued(job_id, settings=settings):
        return
    from worker.runner import execute_job

    execute_job(job_id, settings=settings)


def is_queued(job_id: str, *, settings: Settings) -> bool:
    with session_scope(settings.sqlalchemy_url) as session:
        return session.scalar(select(JobRow.status).where(JobRow.id == job_id)) == "queued"
