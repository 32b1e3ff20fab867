"""Faults for the fault suite, all real: a TCP proxy in front of Postgres that can be stopped
(the database goes away under the API and the workers, then comes back), a worker process whose
clock runs behind, a worker that holds its job at a step until the test releases it, and readers
of what a job's events say about its attempts (training runs, steps trained). A live `distill api`
is `tests.factories.server.live_api`."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]


class TcpProxy:
    """Forwards `127.0.0.1:<port>` to `target`. `stop()` closes the port and cuts every open
    connection (the server is gone); `start()` opens the same port again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def url_for(self, database_url: str) -> str:
        """`database_url` pointed at this proxy."""
        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(
            hide_password=False)

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        if listener is not None:
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def hold_env(step: int, release: Path) -> dict[str, str]:
    """A worker's environment that holds each job at optimizer step `step` (its metrics and
    progress written) until the file `release` exists (`worker/step_hold.py`): a short job is
    still running when the test's fault hits, however fast or slow the machine."""
    from worker import step_hold

    return {step_hold.HOOKS_ENV: "1", step_hold.STEP_ENV: str(step),
            step_hold.RELEASE_ENV: str(release)}


def wait_for_log(log: Path, *markers: str, after: int = 0, timeout: float = 60) -> str:
    """The text of `log` past offset `after` once it holds every one of `markers`."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_bytes()[after:].decode(errors="replace") if log.exists() else ""
        if all(marker in text for marker in markers):
            return text
        assert time.monotonic() < deadline, f"{log} never said {markers}: {text[-3000:]}"
        time.sleep(0.2)


def clock_behind_env(tmp: Path, seconds: float) -> dict[str, str]:
    """Environment for a process whose clock (`time.time`) runs `seconds` behind this one's."""
    site = tmp / f"clock-behind-{int(seconds)}"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import time\n_real = time.time\n"
        f"time.time = lambda: _real() - {seconds!r}\n"
        f"time.time_ns = lambda: int((_real() - {seconds!r}) * 1e9)\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")]))}


# -- what a job's events say -------------------------------------------------------------------


def job_events(get: Any, job_id: str) -> list[dict[str, Any]]:
    """Every event of the job, oldest first (`get` is a client's `get` with the key's headers)."""
    response = get(f"/v1/distillation/jobs/{job_id}/events?limit=1000")
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def started_attempts(events: list[dict[str, Any]]) -> int:
    """How many training runs the job had (each claim writes one "started attempt" event)."""
    return sum("started attempt" in e["message"] for e in events)


def trained_steps(events: list[dict[str, Any]]) -> list[int]:
    """The optimizer steps whose training metrics were recorded, in the order they were."""
    return [e["data"]["step"] for e in events
            if e["type"] == "metrics" and "learning_rate" in (e["data"] or {})]
