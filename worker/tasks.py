"""Celery tasks: each receives only a job id; the work and the state changes live elsewhere."""

from __future__ import annotations

from app.jobs import lifecycle
from app.jobs.queue import RUN_JOB_TASK, TRAINING_QUEUE
from app.kit.db import session_scope
from app.kit.logs import job_context
from app.settings import get_settings
from worker.celery_app import celery_app


@celery_app.task(name=RUN_JOB_TASK, queue=TRAINING_QUEUE)
def run_job(job_id: str) -> None:
    """Claim the job and run it; a duplicate or late message finds it claimed and does nothing."""
    with job_context(job_id=job_id):
        _run_job(job_id)


def _run_job(job_id: str) -> None:
    settings = get_settings()
    # A message for a job that is no longer queued (cancelled, or a duplicate) is dropped before
    # the training core (torch) is imported: stale messages cost the queue milliseconds.
    with session_scope(settings.sqlalchemy_url) as session:
        if not lifecycle.is_queued(session, job_id=job_id):
            return
    from worker.runner import execute_job

    execute_job(job_id, settings=settings)
