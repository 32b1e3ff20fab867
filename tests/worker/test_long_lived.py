"""A worker that has lived a while: its main process has talked to Postgres many times (the
reconciler's timer) before each job's child process is forked. Connections must never cross the
fork: psycopg prepares a statement after a few runs, and a child sharing its parent's server
session then collides with the parent's prepared statement names
(`DuplicatePreparedStatement: prepared statement "_pg3_0" already exists`)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.factories.worker import FINAL, create_job, start_worker, stop_worker, wait_for


@pytest.fixture
def long_lived_worker(settings: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(settings, DISTILL_RECONCILE_INTERVAL_S="0.1")
    wait_until_statements_prepared(settings)
    yield proc
    stop_worker(proc)


def worker_queries_seen(settings: Any) -> bool:
    """True once a backend on the test database other than ours has queried the jobs table."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(settings.database_url, poolclass=NullPool)
    with engine.connect() as conn:
        n = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query ILIKE '%FROM jobs%'"
        )).scalar_one()
    engine.dispose()
    return int(n) > 0


def wait_until_statements_prepared(settings: Any, seconds: float = 4.0) -> None:
    """Let the worker's reconciler run its queries well past psycopg's prepare threshold (five
    executions) at 0.1 s a pass, so its main-process connection holds prepared statements."""
    deadline = time.monotonic() + 60
    while not worker_queries_seen(settings):
        assert time.monotonic() < deadline, "the worker's reconciler never queried the jobs table"
        time.sleep(0.2)
    time.sleep(seconds)


def test_several_jobs_in_a_row_on_a_worker_that_has_lived_a_while(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    long_lived_worker: Any,
) -> None:
    # Given a worker whose main process has run the reconciler's queries ~60 times, so that they
    # are prepared statements on its connection, when three jobs run one after the other, each
    # in its own freshly forked child process
    outcomes = []
    for _ in range(3):
        job_id, _teacher = create_job(client, auth, tiny_teacher_dir, train=32, validation=16,
                                      max_steps=4)
        outcomes.append(wait_for(client, auth, job_id, FINAL, timeout=180))
        time.sleep(1.0)  # the main process keeps preparing while the next child waits

    # Then every one of them succeeded, once
    assert [(j["status"], j["error"]) for j in outcomes] == [("succeeded", None)] * 3
    assert [j["attempts"] for j in outcomes] == [1, 1, 1]


def test_a_job_requeued_after_sigkill_resumes_on_a_worker_that_has_lived_a_while(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
) -> None:
    # Given a worker running a long job with checkpoints
    first = start_worker(settings, DISTILL_RECONCILE_INTERVAL_S="0.1")
    try:
        job_id, _ = create_job(client, auth, tiny_teacher_dir, train=400, validation=16,
                               epochs=3, batch_size=4, checkpoint_every_steps=20)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
            if job["progress"]["stage"] == "distill" and job["progress"]["step"] >= 45:
                break
            assert job["status"] in ("queued", "running"), job
            time.sleep(0.3)
        else:
            raise AssertionError(f"job never got past step 45: {job}")
    finally:
        # When the worker and its child are killed outright
        stop_worker(first, signal.SIGKILL)

    # and a new worker lives long enough to have prepared statements before the job comes back
    second = start_worker(settings, DISTILL_RECONCILE_INTERVAL_S="0.1",
                          DISTILL_STALE_HEARTBEAT_AFTER_S="3")
    try:
        done = wait_for(client, auth, job_id, FINAL, timeout=300)
    finally:
        stop_worker(second)

    # Then the job resumed from its checkpoint on attempt 2 and succeeded
    assert (done["status"], done["error"], done["attempts"]) == ("succeeded", None, 2), done
    events = client.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000",
                        headers=auth).json()["data"]
    assert any("Resumed from checkpoint" in e["message"] for e in events), [
        e["message"] for e in events]
