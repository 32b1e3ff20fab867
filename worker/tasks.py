"""Celery tasks: each receives only a job id; the work and the state changes live elsewhere."""

from __future__ import annotations

from celery import Task

from app.jobs import fairness, lifecycle
from app.jobs.queue import RUN_JOB_TASK, TRAINING_QUEUE
from app.kit.db import session_scope
from app.kit.logs import job_context
from app.settings import get_settings
from worker.celery_app import celery_app


@celery_app.task(name=RUN_JOB_TASK, queue=TRAINING_QUEUE, bind=True)
def run_job(self: Task, job_id: str) -> None:
    """Claim the best job of the queue the message came on (that job or another: `fairness`) and
    run it; a message that finds nothing to claim does nothing."""
    delivery = self.request.delivery_info or {}
    with job_context(job_id=job_id):
        _run_job(job_id, delivered_on=delivery.get("routing_key"))


def _run_job(job_id: str, *, delivered_on: str | None = None) -> None:
    settings = get_settings()
    # A message that finds nothing to claim (its job cancelled or claimed, a duplicate, tenants
    # at their limit) is dropped before a job is built: stale messages cost the queue
    # milliseconds. (The training core is already loaded: the main process preloads it.)
    with session_scope(settings.sqlalchemy_url) as session:
        queue = lifecycle.wakeup_queue(session, job_id=job_id, settings=settings)
        if delivered_on is not None and delivered_on in {q.name for q in settings.queue_classes}:
            queue = delivered_on  # where the message came from: a queue this worker consumes
        if fairness.next_job(session, queue=queue, also=job_id,
                             max_running=settings.max_running_jobs_per_tenant) is None:
            return
    from worker.runner import execute_job

    execute_job(job_id, settings=settings, queue=queue)
