"""A real `distill api` process for tests that measure it (memory) or need its own event loop;
and uploads streamed from disk, so that the test process never holds a large body."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_api(settings: Any, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """`distill api` on the settings' database, broker and data directory (its own process
    group); `env` overrides `DISTILL_*` variables. Returns the process and its base URL once
    `/healthz` answers."""
    port = _free_port()
    full_env = {**os.environ, "DISTILL_DATABASE_URL": settings.database_url,
                "DISTILL_BROKER_URL": settings.broker_url,
                "DISTILL_DATA_DIR": str(settings.resolved_data_dir),
                "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.Popen([sys.executable, "-m", "distill_cli", "api", "--port", str(port)],
                            env=full_env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"distill api exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    stop_api(proc)
    raise RuntimeError("distill api did not answer /healthz within 120 s")


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM afresh from the current RSS (Linux: `5` to /proc/<pid>/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def upload_from_disk(url: str, auth: dict[str, str], path: Path, *, purpose: str = "train",
                     timeout: float = 900) -> httpx.Response:
    """POST /v1/files with `path` as the file, read from disk a megabyte at a time."""
    boundary = "distill-test-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                yield chunk
        yield tail

    length = len(head) + path.stat().st_size + len(tail)
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}",
               "Content-Length": str(length)}
    return httpx.post(f"{url}/v1/files", content=body(), headers=headers, timeout=timeout)
