"""The Celery app of the training workers: the shared queue settings plus the worker's own.

Messages only wake workers: the job row in the database is the queue of record, so the broker
may lose or duplicate a message without losing or doubling a job. Hence `acks_late` (a message
is not dropped if its worker dies), prefetch 1 and one job at a time per worker process, each
in a fresh child process.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from app.jobs.queue import celery_settings
from app.settings import get_settings
from app.workers import presence
from worker import reconcile_timer, shutdown

celery_app = Celery("distill", include=["worker.tasks"])
celery_app.conf.update(
    celery_settings(get_settings().celery_broker_url),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    # A fresh process per job gives its memory (and GPU memory) back to the system.
    worker_max_tasks_per_child=1,
    worker_send_task_events=False,
)

app = celery_app  # `celery -A worker.celery_app` finds `app`


_consumer: Any = None  # the worker's consumer, whose pool runs the jobs


@worker_ready.connect
def _start_reconciler(sender: Any = None, **_: Any) -> None:
    global _consumer
    _consumer = sender
    # Advertise what this worker holds and the queues it consumes (`-Q`), in the registry.
    consuming = sender.app.amqp.queues.consume_from if sender is not None else None
    presence.join(get_settings(), queues=sorted(consuming or {}))
    reconcile_timer.start(get_settings())


@worker_shutting_down.connect
def _pause_jobs(**_: Any) -> None:
    # SIGTERM reaches this process only (docker stop): pass it on, so the running job
    # checkpoints and is handed back instead of holding the shutdown up until it ends.
    if _consumer is not None:
        shutdown.forward_to_pool(_consumer.pool)


@worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    reconcile_timer.stop()
    presence.leave(get_settings())
