"""Worker processes for tests: start a real `distill worker`, stop or kill it, run toy jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.jobs.lifecycle import reconcile
from app.kit.db import session_scope
from tests.factories.api import NO_RUNTIME_EXPORT, job_body, sentiment_files, upload_model_dir

ROOT = Path(__file__).resolve().parents[2]
FINAL = {"succeeded", "failed", "cancelled"}


def start_worker(settings: Any, *, log: Path | None = None, **env: str) -> subprocess.Popen[bytes]:
    """A real `distill worker` (its own process group) on the settings' database, broker and
    data directory; `env` overrides `DISTILL_*` variables (heartbeat 0.5 s by default, no ONNX
    export unless this process's environment or `env` turns it on); its output goes to `log`
    when given (appended)."""
    full_env = {**NO_RUNTIME_EXPORT, **os.environ, "DISTILL_DATABASE_URL": settings.database_url,
                "DISTILL_BROKER_URL": settings.broker_url,
                "DISTILL_DATA_DIR": str(settings.resolved_data_dir),
                "DISTILL_HEARTBEAT_INTERVAL_S": "0.5", **env}
    out = log.open("ab") if log is not None else None
    try:
        return subprocess.Popen([sys.executable, "-m", "distill_cli", "worker"], env=full_env,
                                cwd=ROOT, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT if out else None)
    finally:
        if out is not None:
            out.close()  # the child has its own copy of the descriptor


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send `sig` to the worker and its job processes; SIGKILL them if they linger past 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def create_job(client: Any, auth: dict[str, str], teacher_dir: Path, *, train: int = 16,
               validation: int = 8, **hyperparameters: Any) -> tuple[str, str]:
    """Upload a toy data set and the tiny teacher, create a job; (job id, teacher model id)."""
    train_id, val_id = sentiment_files(client, auth, train=train, validation=validation)
    teacher = upload_model_dir(client, auth, teacher_dir)["id"]
    body = job_body(teacher=teacher, training_file=train_id, validation_file=val_id)
    body["hyperparameters"].update(hyperparameters)
    response = client.post("/v1/distillation/jobs", headers=auth, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"]), teacher


def wait_for(client: Any, auth: dict[str, str], job_id: str, statuses: set[str],
             timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
        if job["status"] in statuses:
            return dict(job)
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")




def reconcile_now(settings: Any) -> dict[str, list[str]]:
    """One reconciler pass, as a worker's timer runs it."""
    with session_scope(settings.sqlalchemy_url) as session:
        return reconcile(session, settings=settings)


def shared_dir_settings(pg_url: str, redis_db: int, data_dir: Path,
                        monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Settings as conftest's, on one data directory a module shares with its live processes
    (API, worker): the tables truncated and the Redis database flushed before each test."""
    import redis

    from app.settings import get_settings
    from tests.conftest import _truncate_all
    from tests.factories.api import REDIS_URL

    monkeypatch.setenv("DISTILL_EXPORT_RUNTIMES", NO_RUNTIME_EXPORT["DISTILL_EXPORT_RUNTIMES"])
    monkeypatch.setenv("DISTILL_DATABASE_URL", pg_url)
    monkeypatch.setenv("DISTILL_BROKER_URL", f"{REDIS_URL}/{redis_db}")
    monkeypatch.setenv("DISTILL_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    _truncate_all(pg_url)
    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
    yield get_settings()
    get_settings.cache_clear()
