"""The broker side of the job queue, in one place: its Celery settings, the queue's name, the
task's name, and the wake-up the API (and the reconciler) sends.

The job row is the queue of record. A message only wakes a worker, carrying just the job id: a
message that is lost is re-sent by the reconciler and a duplicated one is harmless (the worker's
claim is atomic), so a failed send is logged, not raised. The worker's Celery app
(`worker/celery_app.py`) is built from `celery_settings`; the API never imports it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery

from app.settings import Settings

log = logging.getLogger(__name__)

TRAINING_QUEUE = "training"
RUN_JOB_TASK = "worker.tasks.run_job"


def celery_settings(broker_url: str) -> dict[str, Any]:
    """What a sender and a worker must agree on: broker, queue, serialisation, no results."""
    return {
        "broker_url": broker_url,
        "task_default_queue": TRAINING_QUEUE,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        # Longer than any job, so Redis does not redeliver a message whose job is still running
        # (a redelivery would be harmless: the claim is atomic). The SQLite-file broker has no
        # such option (it would hand it to create_engine).
        "broker_transport_options": (
            {"visibility_timeout": 24 * 3600} if broker_url.startswith(("redis", "rediss")) else {}
        ),
    }


_senders: dict[str, Celery] = {}
_senders_lock = threading.Lock()


def _sender(broker_url: str) -> Celery:
    """A send-only Celery app per broker URL (it knows the task by name, not by import)."""
    with _senders_lock:
        if broker_url not in _senders:
            sender = Celery("distill-sender", set_as_current=False)
            sender.conf.update(celery_settings(broker_url))
            _senders[broker_url] = sender
        return _senders[broker_url]


def send_wakeup(job_id: str, *, settings: Settings) -> bool:
    """Send the wake-up message for `job_id`; False (and a log line) when the broker is down."""
    sender = _sender(settings.celery_broker_url)
    try:
        with sender.connection_for_write() as connection:
            sender.send_task(
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
