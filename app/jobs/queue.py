"""The broker side of the job queue, in one place: its Celery settings, the queue's name, the
task's name, and the wake-up the API (and the reconciler) sends.

The job row is the queue of record. A message only wakes a worker, carrying just the job id: a
message that is lost is re-sent by the reconciler and a duplicated one is harmless (the worker's
claim is atomic), so a failed send is logged, not raised. The worker's Celery app
(`worker/celery_app.py`) is built from `celery_settings`; the API never imports it.

A job's wake-up goes to the queue it was routed to at creation (`routing.py`: one queue per
class of workers, `DISTILL_WORKER_QUEUES`); the default is `training`.

`waiting_wakeups` reads which jobs' messages still wait in the queues, so that the reconciler
re-sends only a wake-up that is really gone (a flushed or restarted broker): while every worker
is busy, a queued job keeps exactly one message, not one more per reconciler pass.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from typing import Any

from celery import Celery
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from app.jobs.queue_classes import DEFAULT_QUEUE
from app.settings import Settings

log = logging.getLogger(__name__)

TRAINING_QUEUE = DEFAULT_QUEUE
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


def send_wakeup(job_id: str, *, settings: Settings, queue: str = TRAINING_QUEUE) -> bool:
    """Send the wake-up message for `job_id` to `queue`; False (and a log line) when the broker
    is down."""
    sender = _sender(settings.celery_broker_url)
    try:
        with sender.connection_for_write() as connection:
            sender.send_task(
                RUN_JOB_TASK,
                args=[job_id],
                queue=queue,
                connection=connection,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
    except Exception:
        log.warning("could not send the wake-up for %s; the reconciler will re-send it", job_id,
                    exc_info=True)
        return False
    return True


# kombu's Redis transport keeps a queue as one list per priority step: the queue's own name for
# priority 0 (every message here) and `<name>\x06\x16<step>` for the others.
_REDIS_PRIORITY_SEP = "\x06\x16"
_REDIS_PRIORITY_STEPS = (3, 6, 9)
_broker_engines: dict[str, Engine] = {}


def waiting_wakeups(settings: Settings) -> set[str] | None:
    """The ids of the jobs whose wake-up waits in a configured queue (or the default one), not
    yet taken by a worker; None when the broker cannot tell (a kind this does not read, or one
    that does not answer)."""
    url = settings.celery_broker_url
    queues = sorted({TRAINING_QUEUE, *(q.name for q in settings.queue_classes)})
    payloads: list[str] | list[bytes]
    try:
        if url.startswith(("redis://", "rediss://")):
            payloads = _redis_waiting(url, queues)
        elif url.startswith("sqla+"):
            payloads = _sqla_waiting(url.removeprefix("sqla+"), queues)
        else:
            return None
    except Exception:
        log.warning("could not read the training queue; wake-ups are re-sent by age",
                    exc_info=True)
        return None
    return {job_id for payload in payloads if (job_id := _job_id(payload)) is not None}


def _redis_waiting(url: str, queues: list[str]) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        names = [name for queue in queues
                 for name in (queue, *(f"{queue}{_REDIS_PRIORITY_SEP}{step}"
                                       for step in _REDIS_PRIORITY_STEPS))]
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.lrange(name, 0, -1)
            return [item for items in pipe.execute() for item in items]
    finally:
        client.close()


def _sqla_waiting(url: str, queues: list[str]) -> list[str]:
    """kombu's SQLAlchemy transport: a message stays `visible` until a worker takes it."""
    engine = _broker_engines.get(url)
    if engine is None:  # no pool: nothing to carry across a fork
        engine = _broker_engines.setdefault(url, create_engine(url, poolclass=NullPool))
    with engine.connect() as conn:
        return list(conn.scalars(text(
            "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id "
            "WHERE q.name IN :queues AND m.visible").bindparams(
                bindparam("queues", expanding=True)), {"queues": queues}))


def _job_id(payload: str | bytes) -> str | None:
    """The job id a wake-up message carries (Celery's message protocol 2: the body is the JSON
    `[args, kwargs, embed]`, base64-encoded by kombu); None for anything else."""
    try:
        message = json.loads(payload)
        if message.get("headers", {}).get("task") != RUN_JOB_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
