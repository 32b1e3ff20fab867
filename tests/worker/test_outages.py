"""The fault suite, part two (see `test_faults.py`): a worker frozen past its lease (its late
writes refused), Postgres going away under the API and a worker (a proxy in front of it is
stopped), the API restarted while a job runs. Apart from the first part so that the two run on
both test processes at once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from app.jobs.tables import JobRow
from app.kit.db import engine_for, session_scope
from tests.factories.api import assert_error
from tests.factories.fault_jobs import SHORT_JOB, owner, started_worker, wait_ready
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
    worker_log = tmp_path / "worker.log"
    worker = start_worker(settings, log=worker_log, DISTILL_DATABASE_URL=via_proxy,
                          DISTILL_RECONCILE_INTERVAL_S="2", **hold_env(5, release))
    try:
        # (the worker and the API start side by side)
        with live_api(settings, tmp_path / "api.log", DISTILL_DATABASE_URL=via_proxy) as api, \
                httpx.Client(base_url=api.url, timeout=30) as http:
            wait_ready(worker, worker_log)
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
    worker_log = tmp_path / "worker.log"
    worker = start_worker(settings, log=worker_log, DISTILL_RECONCILE_INTERVAL_S="2",
                          **hold_env(5, release))
    try:
        # (the worker and the API start side by side)
        with live_api(settings, log) as api, httpx.Client(base_url=api.url, timeout=30) as http:
            wait_ready(worker, worker_log)
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
