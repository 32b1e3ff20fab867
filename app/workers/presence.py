"""A worker process's presence in the registry: it joins when Celery is ready, beats with the
reconciler's timer, and leaves when it shuts down. Failures are logged, never raised: the
registry informs operators, and a worker without its row still runs jobs."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable

from app.kit.db import session_scope
from app.settings import Settings
from app.workers import registry
from app.workers.capabilities import resolve

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def join(settings: Settings, *, queues: list[str]) -> None:
    """Register this worker with what it can hold and the queues it consumes."""
    try:
        caps = resolve(settings, queues=queues)
        with session_scope(settings.sqlalchemy_url) as session:
            registry.register(session, worker_id=WORKER_ID, hostname=socket.gethostname(),
                              caps=caps)
        log.info("registered as %s: %s", WORKER_ID, caps)
    except Exception:
        log.warning("could not register this worker", exc_info=True)


def _write(settings: Settings, change: Callable[..., object], failed: str) -> None:
    """`change(session, worker_id=…)` in a transaction; a failure is logged as `failed`."""
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            change(session, worker_id=WORKER_ID)
    except Exception:
        log.warning(failed, exc_info=True)


def beat(settings: Settings) -> None:
    _write(settings, registry.beat, "could not refresh this worker's heartbeat")


def leave(settings: Settings) -> None:
    _write(settings, registry.leave, "could not deregister this worker")
