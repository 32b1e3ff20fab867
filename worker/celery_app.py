"""The Celery app of the training workers: the shared queue settings plus the worker's own.

Messages only wake workers: the job row in the database is the queue of record, so the broker
may lose or duplicate a message without losing or doubling a job. Hence `acks_late` (a message
is not dropped if its worker dies), prefetch 1 and one job at a time per worker process, each
in a fresh child process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from app.auth.logs import redact, redact_key_logs
from app.jobs.queue import celery_settings
from app.kit.logs import configure_logging
from app.settings import get_settings
from app.workers import presence
from worker import metrics, reconcile_timer, shutdown

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
_metrics_server: Any = None


@setup_logging.connect
def _configure_logging(loglevel: Any = None, **_: Any) -> None:
    # Connected, this replaces Celery's own set-up: one JSON line per event (DISTILL_LOG_FORMAT).
    configure_logging(get_settings().log_format or "json", level=loglevel or "INFO", scrub=redact)
    redact_key_logs()


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    global _metrics_server
    port = get_settings().worker_metrics_port
    if port:
        _metrics_server = metrics.serve(port)


@worker_init.connect
def _preload_training_core(**_: Any) -> None:
    # The main process imports the training core (torch, transformers: ~6 s of CPU) once, before
    # the pool forks its first child: every job's fresh process then starts with it loaded
    # instead of importing it again. Nothing here opens a connection or starts a thread, so
    # nothing crosses the fork but read-only modules (CUDA is initialised only in the child).
    import worker.runner  # noqa: F401


@worker_process_shutdown.connect
def _forget_job_process(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())


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
    if _metrics_server is not None:
        _metrics_server.shutdown()
        # The folder `distill worker` made for this run (not one the user named).
        folder = Path(os.environ.get(metrics.MULTIPROC_ENV, ""))
        if folder.name.startswith(metrics.METRICS_DIR_PREFIX) and folder.parent == Path(
                tempfile.gettempdir()):
            shutil.rmtree(folder, ignore_errors=True)
