"""The fault suite: real `distill worker` and `distill api` processes on the real Postgres and
Redis, each test injecting one fault while jobs run, and checking that no job is lost and none
is trained twice (one "started attempt" event per training run, every step recorded once).

A job that must still be running when its fault hits is held at a step until the test releases
it (`hold_env`, `worker/step_hold.py`), so the jobs are short: tens of steps, not hundreds.

Faults: SIGTERM of a worker (it checkpoints, hands the job back and exits within its grace
period), the broker flushed with jobs queued and running, one wake-up delivered twice to two
workers, a worker frozen past its lease (its late writes refused), Postgres going away under the
API and a worker (a proxy in front of it is stopped), the API restarted while a job runs.
SIGKILL of a worker mid-distillation is in `test_long_lived.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select, text

from app.jobs.queue import send_wakeup
from app.jobs.tables import JobRow
from app.kit.db import engine_for, session_scope
from tests.factories.api import REDIS_URL, assert_error
from tests.factories.faults import (
    TcpProxy,
    hold_env,
    job_events,
    started_attempts,
    trained_steps,
    wait_for_log,
)
from tests.factories.server import live_api
from tests.factories.worker import FINAL, create_job, start_worker, stop_worker, wait_for
from tests.worker.test_reconciler import wait_for_step

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


def freeze(pid: int, settings: Any) -> None:
    """SIGSTOP `pid`, outside a database transaction (a process frozen inside one would hold its
    row lock, which is another fault)."""
    engine = engine_for(settings.sqlalchemy_url)
    query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND state LIKE 'idle in transaction%'")
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.2)
        with engine.connect() as conn:
            if not conn.scalar(query):
                return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("could not freeze the job process outside a transaction")


B_HOLD = 30


def test_a_worker_frozen_past_its_lease_finds_its_job_taken_and_writes_nothing_more(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given worker A training a job (held at step 15, never released), and an idle worker B
    # (that holds it at step 30 until the test releases it)
    a_log, b_log, b_release = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "b-release"
    a = started_worker(settings, a_log, DISTILL_RECONCILE_INTERVAL_S="3600",
                       **hold_env(15, tmp_path / "never-released"))
    job_id, _ = create_job(client, auth, tiny_teacher_dir, **SHORT_JOB,
                           checkpoint_every_steps=10)
    b = start_worker(settings, log=b_log, DISTILL_RECONCILE_INTERVAL_S="3600",
                     **hold_env(B_HOLD, b_release))
    try:
        wait_for_step(client, auth, job_id, 15)
        wait_ready(b, b_log)
        a_owner, _ = owner(settings, job_id)
        assert a_owner is not None
        a_job_process = int(a_owner.split(":")[1])
        # When A's job process freezes past its lease, the reconciler re-queues the job and B
        # takes it over
        freeze(a_job_process, settings)
        a_paused_at = a_log.stat().st_size
        try:
            monkeypatch.setattr(settings, "stale_heartbeat_after_s", 1.0)
            time.sleep(1.5)
            from tests.factories.worker import reconcile_now

            assert reconcile_now(settings)["queued"] == [job_id]
            deadline = time.monotonic() + 120
            while owner(settings, job_id)[1] != 2 or owner(settings, job_id)[0] is None:
                assert time.monotonic() < deadline, "B never claimed the job"
                time.sleep(0.2)
            b_step = wait_for_step(client, auth, job_id, 1)["progress"]["step"]
            wait_for_step(client, auth, job_id, min(b_step + 5, B_HOLD))
        finally:
            # and A comes back to life while B trains
            os.kill(a_job_process, signal.SIGCONT)
        # (B is held until A has learnt it lost the job, so that A's run ends while B's goes on)
        assert owner(settings, job_id)[1] == 2
        wait_for_log(a_log, "lost its lease", after=a_paused_at, timeout=60)
        b_release.touch()
        done = wait_for(client, auth, job_id, FINAL, timeout=300)
    finally:
        stop_worker(a)
        stop_worker(b)

    # Then B finished the job, and A wrote nothing after the takeover: after B's start every
    # step is recorded once, in order
    assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 2, None)
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    assert started_attempts(events) == 2
    b_started = next(i for i, e in enumerate(events) if "started attempt 2" in e["message"])
    after = trained_steps(events[b_started:])
    assert after == list(range(after[0], done["progress"]["total_steps"] + 1))
    assert "no longer owns the job" in a_log.read_text(errors="replace") or \
        "lost its lease" in a_log.read_text(errors="replace")


def test_the_database_going_away_under_the_api_and_a_worker(
    settings: Any, auth: dict[str, str], tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given the API and a worker reaching Postgres through a proxy, and a job running
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    via_proxy = proxy.url_for(settings.database_url)
    release = tmp_path / "release"
    worker = started_worker(settings, tmp_path / "worker.log", DISTILL_DATABASE_URL=via_proxy,
                            DISTILL_RECONCILE_INTERVAL_S="2", **hold_env(5, release))
    try:
        with live_api(settings, tmp_path / "api.log", DISTILL_DATABASE_URL=via_proxy) as api, \
                httpx.Client(base_url=api.url, timeout=30) as http:
            job_id, _ = create_job(http, auth, tiny_teacher_dir, **SHORT_JOB)
            before = wait_for_step(http, auth, job_id, 5)["progress"]["step"]

            # When the database goes away for a while, the job (released) training on meanwhile
            proxy.stop()
            release.touch()
            down = time.monotonic()
            during = [http.get(f"/v1/distillation/jobs/{job_id}", headers=auth),
                      http.get("/v1/models", headers=auth)]
            time.sleep(max(0.0, 6 - (time.monotonic() - down)))
            proxy.start()

            # Then requests meanwhile were answered 503 in the error shape
            for response in during:
                assert_error(response, 503, code="service_unavailable")
                assert response.headers["Retry-After"]
            # and, with no restart, the API answers again and the job went on and succeeded
            deadline = time.monotonic() + 60
            while http.get(f"/v1/distillation/jobs/{job_id}", headers=auth).status_code != 200:
                assert time.monotonic() < deadline, "the API did not come back"
                time.sleep(0.5)
            done = wait_for(http, auth, job_id, FINAL, timeout=300)
            assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 1, None)
            assert done["progress"]["step"] > before
            # and the same worker runs the next job
            again, _ = create_job(http, auth, tiny_teacher_dir, max_steps=3)
            assert wait_for(http, auth, again, FINAL)["status"] == "succeeded"
            assert api.proc.poll() is None and worker.poll() is None
            events = job_events(lambda url: http.get(url, headers=auth), job_id)
            assert started_attempts(events) == 1
    finally:
        stop_worker(worker)
        proxy.stop()


def job_progress(settings: Any, job_id: str) -> dict[str, Any]:
    """The job's progress as its worker last wrote it (read from the database: no API needed)."""
    with session_scope(settings.sqlalchemy_url) as session:
        progress = session.scalar(select(JobRow.progress).where(JobRow.id == job_id))
    assert progress is not None
    return dict(progress)


def test_jobs_do_not_notice_the_api_restarting(
    settings: Any, auth: dict[str, str], tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given the API and a worker, and a job running
    log, release = tmp_path / "api.log", tmp_path / "release"
    worker = started_worker(settings, tmp_path / "worker.log", DISTILL_RECONCILE_INTERVAL_S="2",
                            **hold_env(5, release))
    try:
        with live_api(settings, log) as api, httpx.Client(base_url=api.url, timeout=30) as http:
            job_id, _ = create_job(http, auth, tiny_teacher_dir, **SHORT_JOB)
            wait_for_step(http, auth, job_id, 5)

        # When the API stops, and starts again a few seconds later, while the job (released
        # once the API is down) runs
        while_down = job_progress(settings, job_id)
        release.touch()
        time.sleep(3)
        later = job_progress(settings, job_id)
        with live_api(settings, log) as api, httpx.Client(base_url=api.url, timeout=30) as http:
            # Then the job went on meanwhile and finished in its first attempt, with no warning
            done = wait_for(http, auth, job_id, FINAL, timeout=300)
            events = job_events(lambda url: http.get(url, headers=auth), job_id)
    finally:
        stop_worker(worker)
    assert later != while_down  # it trained on (or moved on to the next stage) meanwhile
    assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 1, None)
    assert started_attempts(events) == 1
    assert [e["message"] for e in events if e["level"] != "info"] == []
