"""Child processes of the CLI (the worker of `distill serve`, the server of `distill demo`)."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM,
                 timeout: float = 20.0) -> None:
    """Ask `proc` to stop with `sig`; kill it if it is still there after `timeout` seconds."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
