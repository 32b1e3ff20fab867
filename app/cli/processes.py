"""Child processes of the CLI (the worker of `distill serve`, the server of `distill demo`)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from app.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "distill-worker-metrics-"


def stop_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM,
                 timeout: float = 20.0) -> None:
    """Ask `proc` to stop with `sig`; kill it if it is still there after `timeout` seconds."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def worker_metrics_env(settings: Settings) -> dict[str, str]:
    """The environment a worker whose metrics are served needs: `PROMETHEUS_MULTIPROC_DIR`, where
    its job processes write their metrics. A folder of its own, or the one given, emptied: values
    left by an earlier run would be added to this one's."""
    if not settings.worker_metrics_port:
        return {}
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX))
    return {MULTIPROC_ENV: str(path)}
