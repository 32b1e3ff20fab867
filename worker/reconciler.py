"""The reconciler: re-sends wake-ups of queued jobs nobody claimed, recovers jobs of dead workers.

Runs as a timer thread in every worker's main process (and in `distill serve`). Running it in
several places at once is safe: every change it makes is a conditional UPDATE, and a duplicated
wake-up is harmless.
"""

from __future__ import annotations

import logging
import threading

from app.jobs import lifecycle
from app.jobs.queue import send_wakeup
from app.kit.clock import now
from app.kit.db import session_scope
from app.settings import Settings

log = logging.getLogger(__name__)
_stop = threading.Event()
_thread: threading.Thread | None = None


def reconcile_once(settings: Settings) -> dict[str, list[str]]:
    """One pass; returns the job ids it re-sent, re-queued, failed or cancelled."""
    done: dict[str, list[str]] = {"resent": [], "queued": [], "failed": [], "cancelled": []}
    t = now()
    with session_scope(settings.sqlalchemy_url) as session:
        for job in lifecycle.stale_running(session, older_than=t - settings.stale_heartbeat_after_s):
            status = lifecycle.recover_stale(session, job=job, max_attempts=settings.max_attempts)
            if status is not None:
                done[status].append(job.id)
        session.commit()
        for job_id in done["queued"]:
            send_wakeup(job_id, settings=settings)
        for job_id in lifecycle.stale_queued(session, older_than=t - settings.queued_resend_after_s):
            if send_wakeup(job_id, settings=settings):
                lifecycle.mark_enqueued(session, job_id=job_id)
                done["resent"].append(job_id)
    if any(done.values()):
        log.info("reconciler: %s", {k: v for k, v in done.items() if v})
    return done


def _loop(settings: Settings) -> None:
    while not _stop.wait(settings.reconcile_interval_s):
        try:
            reconcile_once(settings)
        except Exception:  # keep the timer alive through a database or broker outage
            log.exception("reconciler pass failed")


def start_reconciler_thread(settings: Settings) -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _stop.clear()
    _thread = threading.Thread(target=_loop, args=(settings,), name="reconciler", daemon=True)
    _thread.start()


def stop_reconciler_thread() -> None:
    _stop.set()
