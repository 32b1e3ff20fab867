"""The reconciler's timer: every worker's main process (and `distill serve`'s worker) runs
`lifecycle.reconcile` every `reconcile_interval_s`. Running it in several places at once is
safe: every change it makes is a conditional UPDATE, and a duplicated wake-up is harmless."""

from __future__ import annotations

import logging
import threading

from app.jobs import lifecycle
from app.kit.db import session_scope
from app.settings import Settings
from app.workers import presence

log = logging.getLogger(__name__)
_stop = threading.Event()
_thread: threading.Thread | None = None


def _loop(settings: Settings) -> None:
    while not _stop.wait(settings.reconcile_interval_s):
        try:
            with session_scope(settings.sqlalchemy_url) as session:
                lifecycle.reconcile(session, settings=settings)
        except Exception:  # keep the timer alive through a database or broker outage
            log.exception("reconciler pass failed")
        presence.beat(settings)  # the registry's heartbeat of this worker


def start(settings: Settings) -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _stop.clear()
    _thread = threading.Thread(target=_loop, args=(settings,), name="reconciler", daemon=True)
    _thread.start()


def stop() -> None:
    _stop.set()
