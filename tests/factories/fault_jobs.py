"""What the fault tests share: a short job held at a step, and workers that are ready."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.jobs.tables import JobRow
from app.kit.db import session_scope
from tests.factories.worker import start_worker

GRACE_S = 20
# A job held at a step (`hold_env`) until the fault has hit: 40 steps over two epochs, each
# writing its metrics (a fenced database write), so that after its release it trains on through
# (or after) the fault: the database away for 6 s, the API restarted, the broker flushed, a
# frozen process, a SIGTERM.
SHORT_JOB = {"train": 80, "validation": 16, "epochs": 2, "batch_size": 4, "log_every_steps": 1}


def started_worker(settings: Any, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A `distill worker` that is ready to take messages."""
    return wait_ready(start_worker(settings, log=log, **env), log)


def wait_ready(proc: subprocess.Popen[bytes], log: Path) -> subprocess.Popen[bytes]:
    """`proc`, once its log says it is ready to take messages."""
    deadline = time.monotonic() + 180
    while not (log.exists() and " ready." in log.read_text(errors="replace")):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)
    return proc


def owner(settings: Any, job_id: str) -> tuple[str | None, int]:
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.execute(select(JobRow.worker_id, JobRow.attempts)
                              .where(JobRow.id == job_id)).one()
    return row.worker_id, row.attempts
