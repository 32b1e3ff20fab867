"""Leases on both databases the service runs on: Postgres, and the SQLite file of embedded mode
(`distill serve`). A claim's lease is refreshed only by its own attempt, and heartbeats and the
staleness check read the database's clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.auth.service import create_key
from app.jobs import lifecycle
from app.jobs.lifecycle import Lease
from app.jobs.status import JobStatus
from app.jobs.tables import JobRow
from app.kit.clock import db_now
from app.kit.db import session_scope


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        yield request.getfixturevalue("settings").sqlalchemy_url
        return
    from app.kit.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'distill.db'}"
    upgrade(url)
    yield url


def queued_job(url: str) -> str:
    with session_scope(url) as session:
        tenant, _ = create_key(session=session, tenant_name="acme")
        session.add(JobRow(id="job-lease", tenant_id=tenant.id, status=JobStatus.QUEUED,
                           task="sequence-classification", request={}, progress={}, metrics={},
                           created_at=time.time(), enqueued_at=time.time(), attempts=0))
    return "job-lease"


def column(url: str, name: str) -> Any:
    with session_scope(url) as session:
        return session.execute(select(getattr(JobRow, name), db_now())
                               .where(JobRow.id == "job-lease")).one()


def test_only_the_attempt_that_holds_the_lease_may_write(database: str) -> None:
    job_id = queued_job(database)
    with session_scope(database) as session:
        job = lifecycle.claim(session, job_id=job_id, worker_id="w-1")
        assert job is not None and job.attempts == 1
    mine = Lease(job_id, "w-1", 1)
    for stranger in (Lease(job_id, "w-2", 1), Lease(job_id, "w-1", 2)):
        with session_scope(database) as session:
            assert not lifecycle.hold(session, stranger, progress={"step": 9})
            with pytest.raises(lifecycle.LeaseLost):
                lifecycle.require(session, stranger)
    with session_scope(database) as session:
        assert lifecycle.hold(session, mine, progress={"step": 1})
    assert column(database, "progress")[0] == {"step": 1}


def test_heartbeats_and_staleness_read_the_database_clock(database: str) -> None:
    job_id = queued_job(database)
    with session_scope(database) as session:
        assert lifecycle.claim(session, job_id=job_id, worker_id="w-1") is not None
    beat, now = column(database, "heartbeat_at")
    assert 0 <= now - beat < 5

    with session_scope(database) as session:
        assert lifecycle.stale_running(session, older_than_s=60) == []
        session.execute(update(JobRow).where(JobRow.id == job_id)
                        .values(heartbeat_at=db_now() - 61))
    with session_scope(database) as session:
        assert [j.id for j in lifecycle.stale_running(session, older_than_s=60)] == [job_id]
        assert lifecycle.heartbeat(session, Lease(job_id, "w-1", 1)) == JobStatus.RUNNING
    with session_scope(database) as session:
        assert lifecycle.stale_running(session, older_than_s=60) == []


def test_a_cancel_racing_a_worker_that_claims_and_hands_back_is_never_lost(settings: Any) -> None:
    # Given a job that a worker claims and hands back as fast as it can (running <-> queued)
    url = settings.sqlalchemy_url
    job_id = queued_job(url)
    for round_ in range(40):
        with session_scope(url) as session:
            session.execute(update(JobRow).where(JobRow.id == job_id)
                            .values(status=JobStatus.QUEUED, worker_id=None, attempts=0))
        stop = threading.Event()

        def flip(stop: threading.Event) -> None:
            while not stop.is_set():
                with session_scope(url) as session:
                    job = lifecycle.claim(session, job_id=job_id, worker_id="w-1")
                if job is None:
                    return  # cancelled: nothing left to claim
                with session_scope(url) as session:
                    lifecycle.release(session, Lease(job_id, "w-1", job.attempts), message="Back.")

        flipper = threading.Thread(target=flip, args=(stop,))
        flipper.start()
        time.sleep(0.005 * (round_ % 5))
        # When a cancel comes in meanwhile
        try:
            with session_scope(url) as session:
                new = lifecycle.request_cancel(session, job_id=job_id)
        finally:
            stop.set()
            flipper.join()
        # Then it took: the job never finished by itself, so the cancel cannot find it finished
        assert new in (JobStatus.CANCELLED, JobStatus.CANCELLING), f"round {round_}: lost"
        assert column(url, "status")[0] in (JobStatus.CANCELLED, JobStatus.CANCELLING)


def test_the_running_limit_holds_on_both_databases(database: str) -> None:
    job_id = queued_job(database)
    with session_scope(database) as session:
        tenant_id = session.get_one(JobRow, job_id).tenant_id
        session.add(JobRow(id="job-next", tenant_id=tenant_id, status=JobStatus.QUEUED,
                           task="sequence-classification", request={}, progress={}, metrics={},
                           created_at=time.time() + 1, enqueued_at=time.time(), attempts=0))
    claimed = []
    with session_scope(database) as session:
        for worker_id in ("w-1", "w-2"):
            job = lifecycle.claim_next(session, queue="training", worker_id=worker_id,
                                       max_running=1)
            claimed.append(job.id if job is not None else None)
    assert claimed == [job_id, None]
