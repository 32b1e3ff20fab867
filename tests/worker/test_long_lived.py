"""A worker that has lived a while: its main process has talked to Postgres (the reconciler's
timer) before each job's child process is forked. Connections must never cross the fork. If they
do, every job process forked after the parent's first query talks over the parent's server
session, and psycopg, which prepares a statement after it has run five times, names it after a
counter each child inherits at the same value: the second job's process then finds the first
one's statement under that name (`DuplicatePreparedStatement: prepared statement "_pg3_2" already
exists`), failing an event write, or a heartbeat, which the worker logs and skips."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories.faults import hold_env, trained_steps
from tests.factories.worker import FINAL, create_job, start_worker, stop_worker, wait_for

# A reconciler pass a second: the main process's queries pass psycopg's prepare threshold (five
# runs) within seconds, while its connection sits idle in the pool between passes.
RECONCILE_S = "1"
CHECKPOINT_EVERY = 20
DB_ERRORS = ("DuplicatePreparedStatement", "already exists", "heartbeat for",
             "lost synchronization", "another command is already in progress")


def database_errors(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if any(marker in line for marker in DB_ERRORS)]


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


@pytest.fixture
def long_lived_worker(settings: Any, worker_log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(settings, log=worker_log, DISTILL_RECONCILE_INTERVAL_S=RECONCILE_S)
    try:
        wait_until_statements_prepared(worker_log)
        yield proc
    finally:
        stop_worker(proc)


def wait_until_statements_prepared(log: Path, passes: int = 8) -> None:
    """Wait for the worker to be ready, then for its reconciler to run `passes` passes (one a
    second): past psycopg's prepare threshold (five runs), its main-process connection holds
    prepared statements."""
    deadline = time.monotonic() + 180  # a worker starts in seconds, but CI machines get busy
    while not (log.exists() and " ready." in log.read_text(errors="replace")):
        assert time.monotonic() < deadline, "the worker did not start: " + str(log)
        time.sleep(0.2)
    time.sleep(passes * float(RECONCILE_S))


def test_several_jobs_in_a_row_on_a_worker_that_has_lived_a_while(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    long_lived_worker: Any, worker_log: Path,
) -> None:
    # Given a worker whose main process has run the reconciler's queries several times, so that they
    # are prepared statements on its connection, when three jobs run one after the other, each
    # in its own freshly forked child process, each writing a dozen events (a metrics event a
    # step) and beating its heartbeat every 0.5 s: well past psycopg's prepare threshold
    outcomes = []
    for _ in range(3):
        job_id, _teacher = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                                      batch_size=4, max_steps=10, log_every_steps=1)
        outcomes.append(wait_for(client, auth, job_id, FINAL, timeout=180))

    # Then every one of them succeeded, once, and no process of the worker hit a database error
    assert [(j["status"], j["error"]) for j in outcomes] == [("succeeded", None)] * 3
    assert [j["attempts"] for j in outcomes] == [1, 1, 1]
    assert database_errors(worker_log) == []


def test_a_job_requeued_after_sigkill_resumes_on_a_worker_that_has_lived_a_while(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, worker_log: Path,
) -> None:
    # Given a worker that has run a job already, running one with checkpoints (100 steps over
    # two epochs), held at step 45 (mid-epoch, past its checkpoint at 40) and never released
    first = start_worker(settings, log=worker_log, DISTILL_RECONCILE_INTERVAL_S=RECONCILE_S,
                         **hold_env(45, worker_log.with_name("never-released")))
    try:
        job_id, _ = create_job(client, auth, tiny_teacher_dir, train=200, validation=16,
                               epochs=2, batch_size=4, checkpoint_every_steps=CHECKPOINT_EVERY,
                               log_every_steps=1)
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

    # and a new worker runs two other jobs (each in a child forked after its main process has
    # talked to the database) before the killed job comes back to it
    others = [create_job(client, auth, tiny_teacher_dir, train=64, validation=16, batch_size=4,
                         max_steps=10, log_every_steps=1)[0] for _ in range(2)]
    second = start_worker(settings, log=worker_log, DISTILL_RECONCILE_INTERVAL_S=RECONCILE_S,
                          DISTILL_STALE_HEARTBEAT_AFTER_S="3")
    try:
        done = wait_for(client, auth, job_id, FINAL, timeout=300)
        others_done = [wait_for(client, auth, other, FINAL, timeout=120) for other in others]
    finally:
        stop_worker(second)

    # Then the job resumed from its newest checkpoint on attempt 2 and succeeded, and so did the
    # others; the steps trained again are at most one checkpoint interval, and every step after
    # the resume was trained once
    assert (done["status"], done["error"], done["attempts"]) == ("succeeded", None, 2), done
    assert [(j["status"], j["error"]) for j in others_done] == [("succeeded", None)] * 2
    events = client.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000",
                        headers=auth).json()["data"]
    resumed = [e for e in events if e["data"] and "resumed_from_step" in e["data"]]
    assert len(resumed) == 1, [e["message"] for e in events]
    step = resumed[0]["data"]["resumed_from_step"]
    assert resumed[0]["message"].startswith(f"Resumed from checkpoint at step {step} ")
    resume = next(i for i, e in enumerate(events) if "started attempt 2" in e["message"])
    first_run, second_run = trained_steps(events[:resume]), trained_steps(events[resume:])
    assert step % CHECKPOINT_EVERY == 0 and 0 <= max(first_run) - step <= CHECKPOINT_EVERY
    assert second_run == list(range(step + 1, done["progress"]["total_steps"] + 1))
    assert database_errors(worker_log) == []
