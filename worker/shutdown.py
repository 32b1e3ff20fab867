"""Stopping a worker in time: `SIGTERM` (`docker stop`, a rolling deploy) makes the job process
save a checkpoint at its next optimizer step and hand its job back, so the next worker goes on
from there, and the whole worker exits within `shutdown_grace_s`.

Celery's main process answers `SIGTERM` with a warm shutdown (it waits for the running task); it
also passes the signal on to its pool processes (`forward_to_pool`), since an orchestrator
signals the main process only. In the job process, `pause_on_sigterm` turns the signal into a
pause of the run; should the run not have stopped by the deadline (a long evaluation, a stuck
step), the job is handed back without the checkpoint and the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def pause_on_sigterm(pause: Callable[[], None], *, grace_s: float,
                     on_deadline: Callable[[], None]) -> Iterator[None]:
    """While the job runs (in the process's main thread): `SIGTERM` calls `pause()`; if the run
    is still going `grace_s` later, `on_deadline()` runs and the process exits."""
    if threading.current_thread() is not threading.main_thread():
        yield  # a test's thread: signals are the main thread's
        return
    timer: threading.Timer | None = None

    def deadline() -> None:
        log.error("the job did not stop within %.0f s of SIGTERM; handing it back and exiting",
                  grace_s)
        try:
            on_deadline()
        finally:
            os._exit(1)

    def handle(signum: int, _frame: FrameType | None) -> None:
        nonlocal timer
        log.warning("%s: saving a checkpoint at the next step, then handing the job back",
                    signal.Signals(signum).name)
        pause()
        if timer is None:
            timer = threading.Timer(grace_s, deadline)
            timer.daemon = True
            timer.start()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if timer is not None:
            timer.cancel()


def forward_to_pool(pool: Any) -> None:
    """In Celery's main process, on its way down: pass `SIGTERM` on to the pool's processes,
    whose running job then pauses (an idle one just exits)."""
    try:
        pids = list(pool.info.get("processes", []))
    except Exception:  # a pool that is already closing
        log.warning("could not list the pool's processes", exc_info=True)
        return
    for pid in pids:
        with suppress(ProcessLookupError):  # gone already
            os.kill(pid, signal.SIGTERM)
