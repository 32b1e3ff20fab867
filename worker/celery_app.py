"""The Celery app, its configuration and its queue (the only Celery configuration there is).

Messages only wake workers: the job row in the database is the queue of record, so the broker
may lose or duplicate a message without losing or doubling a job. Hence `acks_late` (a message
is not dropped if its worker dies), prefetch 1 and one job at a time per worker process.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from app.settings import get_settings

TRAINING_QUEUE = "training"

_broker_url = get_settings().celery_broker_url
celery_app = Celery("distill", include=["worker.tasks"])
celery_app.conf.update(
    broker_url=_broker_url,
    task_default_queue=TRAINING_QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    # A fresh process per job gives its memory (and GPU memory) back to the system.
    worker_max_tasks_per_child=1,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    # Longer than any job, so Redis does not redeliver a message whose job is still running
    # (a redelivery would be harmless: the claim is atomic). The SQLite-file broker has no such
    # option (it would hand it to create_engine).
    broker_transport_options=(
        {"visibility_timeout": 24 * 3600} if _broker_url.startswith(("redis", "rediss")) else {}
    ),
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)

app = celery_app  # `celery -A worker.celery_app` finds `app`


@worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    from worker.reconciler import start_reconciler_thread

    start_reconciler_thread(get_settings())


@worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    from worker.reconciler import stop_reconciler_thread

    stop_reconciler_thread()
