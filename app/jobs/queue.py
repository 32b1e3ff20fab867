"""Waking a worker: a Celery message that carries only the job id.

The job row is the queue of record. A message that is lost is re-sent by the reconciler and a
duplicated one is harmless (the worker's claim is atomic), so a failed send is logged, not raised.
"""

from __future__ import annotations

import logging

from app.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "worker.tasks.run_job"
TRAINING_QUEUE = "training"


def send_wakeup(job_id: str, *, settings: Settings) -> bool:
    """Send the wake-up message for `job_id`; False (and a log line) when the broker is down."""
    from worker.celery_app import celery_app

    try:
        with celery_app.connection_for_write(url=settings.celery_broker_url) as connection:
            celery_app.send_task(
                RUN_JOB_TASK,
                args=[job_id],
                queue=TRAINING_QUEUE,
                connection=connection,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
    except Exception:
        log.warning("could not send the wake-up for %s; the reconciler will re-send it", job_id,
                    exc_info=True)
        return False
    return True
