"""Celery tasks: each receives only a job id; the work and the state changes live elsewhere."""

from __future__ import annotations

from app.settings import get_settings
from worker.celery_app import celery_app


@celery_app.task(name="worker.tasks.run_job", queue="training")
def run_job(job_id: str) -> None:
    """Claim the job and run it; a duplicate or late message finds it claimed and does nothing."""
    from worker.runner import execute_job  # the training core is imported in the child only

    execute_job(job_id, settings=get_settings())
