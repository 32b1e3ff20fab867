"""A live API for tests: a real `distill api` process (uvicorn, access log on) on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.factories.api_process import stop_api

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LiveApi:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distill_env(settings: Any, **env: str) -> dict[str, str]:
    """The environment of a `distill` command on the settings' database, broker and data dir."""
    return {**os.environ, "DISTILL_DATABASE_URL": settings.database_url,
            "DISTILL_BROKER_URL": settings.broker_url,
            "DISTILL_DATA_DIR": str(settings.resolved_data_dir), "PYTHONPATH": str(ROOT), **env}


@contextmanager
def live_api(settings: Any, log: Path, **env: str) -> Iterator[LiveApi]:
    """`distill api` on a free port, its stdout and stderr in `log`; stopped (SIGTERM) on exit."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distill_cli", "api", "--port", str(port)],
                                env=distill_env(settings, **env), cwd=ROOT,
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    api = LiveApi(proc=proc, url=f"http://127.0.0.1:{port}", log=log)
    try:
        _wait_healthy(api)
        yield api
    finally:
        stop_api(proc)


def _wait_healthy(api: LiveApi, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.proc.poll() is not None:
            raise AssertionError(f"`distill api` exited ({api.proc.returncode}): "
                                 f"{api.log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{api.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"`distill api` not healthy after {timeout}s")
