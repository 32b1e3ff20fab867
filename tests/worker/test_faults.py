"""The fault suite: real `distill worker` and `distill api` processes on the real Postgres and
Redis, each test injecting one fault while jobs run, and checking that no job is lost and none
is trained twice (one "started attempt" event per training run, every step recorded once).

A job that must still be running when its fault hits is held at a step until the test releases
it (`hold_env`, `worker/step_hold.py`), so the jobs are short: tens of steps, not hundreds.

Faults: SIGTERM of a worker (it checkpoints, hands the job back and exits within its grace
period), the broker flushed with jobs queued and running, one wake-up delivered twice to two
workers. A worker frozen past its lease, Postgres going away and the API restarted are in
`test_outages.py` (apart, so that both test processes run fault tests at once); SIGKILL of a
worker mid-distillation is in `test_long_lived.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from app.jobs.queue import send_wakeup
from tests.factories.api import REDIS_URL
from tests.factories.fault_jobs import GRACE_S, SHORT_JOB, started_worker, wait_ready
from tests.factories.faults import (
    hold_env,
    job_events,
    started_attempts,
    trained_steps,
    wait_for_log,
)
from tests.factories.worker import FINAL, create_job, start_worker, stop_worker, wait_for
from tests.worker.test_reconciler import wait_for_step


def test_sigterm_checkpoints_hands_the_job_back_and_exits_within_the_grace_period(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given a worker training a job that takes no periodic checkpoint (held at step 10, and
    # never released: the SIGTERM's pause ends the hold)
    log = tmp_path / "worker.log"
    first = started_worker(settings, log, DISTILL_SHUTDOWN_GRACE_S=str(GRACE_S),
                           DISTILL_RECONCILE_INTERVAL_S="3600",
                           **hold_env(10, tmp_path / "never-released"))
    job_id, _ = create_job(client, auth, tiny_teacher_dir, **SHORT_JOB,
                           checkpoint_every_steps=100_000)
    try:
        wait_for_step(client, auth, job_id, 10)
        # When its main process gets SIGTERM, as `docker stop` sends it
        os.kill(first.pid, signal.SIGTERM)
        signalled = time.monotonic()
        try:
            first.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker was still up {GRACE_S} s after SIGTERM") from None
        print(f"worker exited {time.monotonic() - signalled:.1f} s after SIGTERM")
    finally:
        stop_worker(first, signal.SIGKILL)

    # Then the job is queued again with a checkpoint of the step it stopped at
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert (job["status"], job["attempts"]) == ("queued", 1), job
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    paused = [e["data"]["paused_at_step"] for e in events
              if e["data"] and "paused_at_step" in e["data"]]
    assert len(paused) == 1 and paused[0] >= 10
    assert any("shutting down" in e["message"] for e in events)
    listed = client.get(f"/v1/distillation/jobs/{job_id}/checkpoints", headers=auth).json()
    assert [c["step"] for c in listed["data"]] == paused

    # and the next worker goes on from that step: no step trained twice, none skipped
    second = started_worker(settings, log, DISTILL_RECONCILE_INTERVAL_S="3600")
    try:
        done = wait_for(client, auth, job_id, FINAL, timeout=300)
    finally:
        stop_worker(second)
    assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 2, None)
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    resumed = [e["data"]["resumed_from_step"] for e in events
               if e["data"] and "resumed_from_step" in e["data"]]
    assert resumed == paused
    assert trained_steps(events) == list(range(1, done["progress"]["total_steps"] + 1))


def test_jobs_queued_and_running_all_finish_once_after_the_broker_is_flushed(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
    redis_db: int,
) -> None:
    # Given a worker running one job (held at step 5) with two more queued behind it
    log, release = tmp_path / "worker.log", tmp_path / "release"
    proc = started_worker(settings, log, DISTILL_RECONCILE_INTERVAL_S="1",
                          DISTILL_QUEUED_RESEND_AFTER_S="2", **hold_env(5, release))
    try:
        running, _ = create_job(client, auth, tiny_teacher_dir, **SHORT_JOB)
        wait_for_step(client, auth, running, 5)
        queued = [create_job(client, auth, tiny_teacher_dir, max_steps=3)[0] for _ in range(2)]
        # When the broker loses every message (the queued jobs' and the running one's)
        flushed_at = log.stat().st_size
        redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
        # and the reconciler has re-sent the queued jobs' wake-ups while the job still runs
        wait_for_log(log, "reconciler", *queued, after=flushed_at)
        assert wait_for_step(client, auth, running, 5)["status"] == "running"
        release.touch()
        finals = [wait_for(client, auth, job_id, FINAL, timeout=300)
                  for job_id in (running, *queued)]
    finally:
        stop_worker(proc)

    # Then every job finished, each trained once
    assert [(j["status"], j["attempts"]) for j in finals] == [("succeeded", 1)] * 3
    for job_id in (running, *queued):
        assert started_attempts(job_events(lambda url: client.get(url, headers=auth),
                                           job_id)) == 1


def test_one_wakeup_delivered_twice_to_two_workers_trains_the_job_once(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
    redis_db: int,
) -> None:
    # Given two idle workers (started side by side)
    logs = [tmp_path / f"worker-{n}.log" for n in (1, 2)]
    workers = [start_worker(settings, log=log, DISTILL_RECONCILE_INTERVAL_S="3600")
               for log in logs]
    try:
        for proc, log in zip(workers, logs, strict=True):
            wait_ready(proc, log)
            # (each main process has loaded the training core before any job: its job
            # processes are forked with torch in memory instead of importing it)
            assert "libtorch_cpu" in Path(f"/proc/{proc.pid}/maps").read_text()
        # When a job's wake-up reaches the broker twice, one copy for each worker
        job_id, _ = create_job(client, auth, tiny_teacher_dir, max_steps=3)
        assert send_wakeup(job_id, settings=settings)
        done = wait_for(client, auth, job_id, FINAL)
        deadline = time.monotonic() + 30
        while redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").llen("training"):
            assert time.monotonic() < deadline, "the second copy was never taken"
            time.sleep(0.2)
        time.sleep(1)
    finally:
        for proc in workers:
            stop_worker(proc)

    # Then it was trained once
    assert (done["status"], done["attempts"]) == ("succeeded", 1)
    again = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert again["attempts"] == 1
    assert started_attempts(job_events(lambda url: client.get(url, headers=auth), job_id)) == 1
