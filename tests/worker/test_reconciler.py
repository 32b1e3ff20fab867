"""The reconciler on real processes: it re-sends a wake-up only when the broker has lost it (one
outstanding message per queued job however many passes run while the workers are busy), and it
judges leases on the database's clock, so a worker whose clock runs behind keeps its job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from app.jobs.queue import send_wakeup, waiting_wakeups
from app.jobs.tables import JobRow
from app.kit.clock import db_now
from app.kit.db import session_scope
from app.settings import Settings
from tests.factories.api import REDIS_URL, queued_messages
from tests.factories.faults import clock_behind_env, hold_env, job_events
from tests.factories.worker import (
    FINAL,
    create_job,
    reconcile_now,
    start_worker,
    stop_worker,
    wait_for,
)


def wait_for_step(client: Any, auth: dict[str, str], job_id: str, step: int,
                  timeout: float = 600) -> dict[str, Any]:
    """The job once its distill stage has passed `step` (it must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
        if job["progress"]["stage"] == "distill" and job["progress"]["step"] >= step:
            return dict(job)
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never got past step {step}")


def test_the_queue_is_read_on_redis_and_on_the_embedded_broker(
    settings: Any, redis_db: int, tmp_path: Path,
) -> None:
    embedded = Settings(data_dir=tmp_path / "embedded", database_url=settings.database_url,
                        broker_url=None)  # the server-less broker of `distill serve`
    (tmp_path / "embedded").mkdir()
    for broker in (settings, embedded):
        assert send_wakeup("job-a", settings=broker) and send_wakeup("job-b", settings=broker)
        assert waiting_wakeups(broker) == {"job-a", "job-b"}
    # something else in the queue is not taken for a wake-up
    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").lpush("training", b"not a message")
    assert waiting_wakeups(settings) == {"job-a", "job-b"}
    # a broker this cannot read says so
    assert waiting_wakeups(Settings(broker_url="memory://")) is None


def test_while_the_worker_is_busy_each_queued_job_keeps_one_wakeup(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, worker: Any,
    redis_db: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the only worker busy with a long job, and three jobs queued behind it, each with
    # the one wake-up its creation sent
    busy, _ = create_job(client, auth, tiny_teacher_dir, train=400, validation=16, epochs=50,
                         batch_size=2)
    # (the worker starts in seconds; a loaded CI machine may take minutes)
    assert wait_for(client, auth, busy, {"running", *FINAL}, timeout=600)["status"] == "running"
    queued = sorted(create_job(client, auth, tiny_teacher_dir)[0] for _ in range(3))
    assert queued_messages(redis_db) == 3
    monkeypatch.setattr(settings, "queued_resend_after_s", 0.0)  # every wake-up is "old"

    # When the reconciler runs pass after pass while the worker stays busy
    resent = [reconcile_now(settings)["resent"] for _ in range(10)]

    # Then no wake-up was sent again: each queued job still has exactly one
    assert resent == [[]] * 10
    assert queued_messages(redis_db) == 3

    # When the broker loses them all, the next pass sends each job's wake-up once more, and
    # the passes after it none
    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
    assert sorted(reconcile_now(settings)["resent"]) == queued
    assert [reconcile_now(settings)["resent"] for _ in range(5)] == [[]] * 5
    assert queued_messages(redis_db) == 3

    for job_id in (busy, *queued):
        client.post(f"/v1/distillation/jobs/{job_id}/cancel", headers=auth)


def test_a_worker_whose_clock_is_two_minutes_behind_keeps_its_job(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker whose clock runs two minutes behind the reconciler's, training a job
    # (held at step 5 until released: still running when the reconciler looks, on any machine)
    release = tmp_path / "release"
    proc = start_worker(settings, log=tmp_path / "worker.log", DISTILL_RECONCILE_INTERVAL_S="3600",
                        **clock_behind_env(tmp_path, 120), **hold_env(5, release))
    try:
        job_id, _ = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                               epochs=2, batch_size=4)
        wait_for_step(client, auth, job_id, 5)
        started = [e for e in job_events(lambda url: client.get(url, headers=auth), job_id)
                   if "started attempt" in e["message"]]
        assert time.time() - started[0]["created_at"] > 100  # the worker's clock is behind

        # When the reconciler looks for silent workers, a minute of silence counting as dead
        monkeypatch.setattr(settings, "stale_heartbeat_after_s", 60.0)
        done = reconcile_now(settings)

        # Then the job is left to its worker: its heartbeats carry the database's time
        assert done["queued"] == [] and done["failed"] == []
        with session_scope(settings.sqlalchemy_url) as session:
            beat, now = session.execute(select(JobRow.heartbeat_at, db_now())
                                        .where(JobRow.id == job_id)).one()
        assert beat is not None and 0 <= now - beat < 30
        release.touch()
        final = wait_for(client, auth, job_id, FINAL, timeout=300)
    finally:
        stop_worker(proc)
    assert (final["status"], final["attempts"], final["error"]) == ("succeeded", 1, None)
