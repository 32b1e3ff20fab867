"""Sharing the workers between tenants on the real Postgres and Redis: a tenant with
`DISTILL_MAX_RUNNING_JOBS_PER_TENANT` jobs running has its next job held back, a woken worker
claims the best job of its queue (the tenant with the fewest running first, then the oldest),
and a held-back job runs once its tenant's running job ends, never lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.auth.service import create_key
from app.jobs import fairness, lifecycle
from app.jobs.queue import waiting_wakeups
from app.jobs.status import JobStatus
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from app.settings import get_settings
from app.workers.registry import list_workers
from tests.factories.faults import hold_env
from tests.factories.worker import (
    FINAL,
    create_job,
    reconcile_now,
    start_worker,
    stop_worker,
    wait_for,
)


@pytest.fixture
def limited(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test settings with one running job per tenant (as the worker reads them too)."""
    monkeypatch.setenv("DISTILL_MAX_RUNNING_JOBS_PER_TENANT", "1")
    get_settings.cache_clear()
    return get_settings()


def add_jobs(settings: Any, tenant_name: str, count: int) -> list[str]:
    """`count` queued jobs of a new tenant, created one after the other (ids `<tenant>-<n>`).
    Their requests are empty: a worker that claims one fails it at once (training_failed)."""
    ids = [f"{tenant_name}-{n}" for n in range(1, count + 1)]
    with session_scope(settings.sqlalchemy_url) as session:
        tenant, _ = create_key(session=session, tenant_name=tenant_name)
        for job_id in ids:
            session.add(JobRow(id=job_id, tenant_id=tenant.id, status=JobStatus.QUEUED,
                               task="sequence-classification", request={}, progress={},
                               metrics={}, created_at=time.time(), enqueued_at=time.time(),
                               attempts=0))
            session.flush()
            time.sleep(0.01)  # created_at strictly increasing
    return ids


def jobs(settings: Any) -> dict[str, tuple[str, int]]:
    """{job id: (status, attempts)}."""
    with session_scope(settings.sqlalchemy_url) as session:
        return {r.id: (r.status, r.attempts) for r in session.execute(
            select(JobRow.id, JobRow.status, JobRow.attempts))}


def test_a_second_tenants_job_is_claimed_before_the_first_tenants_backlog(limited: Any) -> None:
    from worker.runner import execute_job

    # Given tenant A's five jobs, then tenant B's one, and a worker running A's first
    a = add_jobs(limited, "tenant-a", 5)
    b = add_jobs(limited, "tenant-b", 1)
    with session_scope(limited.sqlalchemy_url) as session:
        assert lifecycle.claim(session, job_id=a[0], worker_id="worker-1") is not None

    # When a second worker answers the next message in the queue, A's second job's
    status = execute_job(a[1], settings=limited)

    # Then it ran B's job (A is at its limit of one), and A's backlog waits, queued
    assert status == JobStatus.FAILED  # its empty request
    after = jobs(limited)
    assert after[b[0]] == (JobStatus.FAILED, 1)
    assert after[a[0]] == (JobStatus.RUNNING, 1)
    assert all(after[job_id] == (JobStatus.QUEUED, 0) for job_id in a[1:])


def test_two_claim_loops_take_the_tenant_with_fewest_running_first(settings: Any) -> None:
    # Given tenant A's five jobs, then tenant B's one
    a = add_jobs(settings, "tenant-a", 5)
    b = add_jobs(settings, "tenant-b", 1)

    # When two workers claim in turn, each woken by the queue's messages in order (A's first)
    claimed = []
    with session_scope(settings.sqlalchemy_url) as session:
        for n, woken_for in enumerate(a + b):
            job = lifecycle.claim_next(session, queue="training", worker_id=f"worker-{n % 2}",
                                       max_running=1, also=woken_for)
            claimed.append(job.id if job is not None else None)

    # Then B's job is claimed second, before A's second; the rest wait on A's limit
    assert claimed == [a[0], b[0], None, None, None, None]

    # And without a limit, the tenant with the fewest running still comes first, then the oldest
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(JobRow).values(status=JobStatus.QUEUED, worker_id=None))
    order = []
    with session_scope(settings.sqlalchemy_url) as session:
        for _ in range(7):
            job = lifecycle.claim_next(session, queue="training", worker_id="w")
            order.append(job.id if job is not None else None)
    assert order == [a[0], b[0], *a[1:], None]


def test_two_workers_racing_for_one_tenants_jobs_claim_one(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a tenant with two queued jobs, a limit of one, and two workers that have both picked
    # a job and reach the tenant's lock at the same moment, each slow between counting the
    # tenant's running jobs and claiming
    a = add_jobs(settings, "tenant-a", 2)
    barrier = threading.Barrier(2)
    real_lock, real_count = fairness.lock_tenant, fairness.running_jobs

    def lock_together(session: Any, **kwargs: Any) -> None:
        barrier.wait(timeout=30)
        real_lock(session, **kwargs)

    def count_slowly(session: Any, **kwargs: Any) -> int:
        count = real_count(session, **kwargs)
        time.sleep(0.5)
        return count

    monkeypatch.setattr(fairness, "lock_tenant", lock_together)
    monkeypatch.setattr(fairness, "running_jobs", count_slowly)

    # When each claims its job
    claimed: list[str | None] = []

    def claim(job_id: str) -> None:
        with session_scope(settings.sqlalchemy_url) as session:
            job = lifecycle.claim(session, job_id=job_id, worker_id=f"worker-{job_id}",
                                  max_running=1)
            claimed.append(job.id if job is not None else None)

    threads = [threading.Thread(target=claim, args=(job_id,)) for job_id in a]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then exactly one got a job; the other is left queued
    assert len(claimed) == 2 and claimed.count(None) == 1
    assert sorted(status for status, _ in jobs(settings).values()) == [JobStatus.QUEUED,
                                                                        JobStatus.RUNNING]


def test_a_held_back_job_runs_after_its_tenants_running_job_ends(limited: Any) -> None:
    from worker.runner import execute_job

    # Given tenant A's first job running on a worker, and the second's message answered
    a = add_jobs(limited, "tenant-a", 2)
    with session_scope(limited.sqlalchemy_url) as session:
        assert lifecycle.claim(session, job_id=a[0], worker_id="worker-1") is not None
    assert execute_job(a[1], settings=limited) is None

    # Then the second waits, queued; the reconciler neither fails it nor re-sends its wake-up
    # while A is at its limit, however old its message
    assert jobs(limited)[a[1]] == (JobStatus.QUEUED, 0)
    with session_scope(limited.sqlalchemy_url) as session:
        session.execute(update(JobRow).where(JobRow.id == a[1])
                        .values(enqueued_at=time.time() - 3600))
    assert not any(reconcile_now(limited).values())
    assert jobs(limited)[a[1]] == (JobStatus.QUEUED, 0)

    # When A's running job ends (its worker hands it back, then a worker runs it to the end)
    with session_scope(limited.sqlalchemy_url) as session:
        assert lifecycle.release(session, lifecycle.Lease(a[0], "worker-1", 1), message="Bye.")
    assert execute_job(a[0], settings=limited) == JobStatus.FAILED

    # Then a wake-up for the held-back job waits in the queue, and it runs
    assert a[1] in (waiting_wakeups(limited) or set())
    assert execute_job(a[1], settings=limited) == JobStatus.FAILED
    assert jobs(limited) == {a[0]: (JobStatus.FAILED, 2), a[1]: (JobStatus.FAILED, 1)}


def test_the_reconciler_wakes_a_held_back_job_when_a_dead_workers_job_fails(
    limited: Any,
) -> None:
    # Given tenant A's first job on a worker that died on its last attempt, the second held back
    a = add_jobs(limited, "tenant-a", 2)
    with session_scope(limited.sqlalchemy_url) as session:
        session.execute(update(JobRow).where(JobRow.id == a[0])
                        .values(attempts=limited.max_attempts - 1))
        assert lifecycle.claim(session, job_id=a[0], worker_id="dead") is not None
        assert lifecycle.claim_next(session, queue="training", worker_id="w", max_running=1,
                                    also=a[1]) is None
        session.execute(update(JobRow).where(JobRow.id == a[0])
                        .values(heartbeat_at=time.time() - 3600))

    # When the reconciler fails the dead worker's job
    done = reconcile_now(limited)

    # Then it wakes the held-back one, which a worker may claim now
    assert done["failed"] == [a[0]] and done["resent"] == [a[1]]
    assert a[1] in (waiting_wakeups(limited) or set())
    with session_scope(limited.sqlalchemy_url) as session:
        job = lifecycle.claim_next(session, queue="training", worker_id="w", max_running=1)
        assert job is not None and job.id == a[1]


def registered(settings: Any) -> list[Any]:
    with session_scope(settings.sqlalchemy_url) as session:
        return list_workers(session, alive_within_s=60)


def times(settings: Any, job_id: str) -> tuple[float, float]:
    with session_scope(settings.sqlalchemy_url) as session:
        started, finished = session.execute(select(JobRow.started_at, JobRow.finished_at)
                                            .where(JobRow.id == job_id)).one()
    return started, finished


def test_real_workers_run_a_second_tenants_job_while_the_first_tenants_backlog_waits(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], settings: Any,
    tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given two real workers, with one running job per tenant (A's long one held at step 40
    # until B's has finished, however fast the machine: the short jobs never reach that step)
    release = tmp_path / "release"
    procs = [start_worker(settings, DISTILL_RECONCILE_INTERVAL_S="3600",
                          DISTILL_MAX_RUNNING_JOBS_PER_TENANT="1", **hold_env(40, release))
             for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while len(registered(settings)) < 2:
            assert time.monotonic() < deadline, "the workers never registered"
            time.sleep(0.5)

        # When tenant A submits a long job and a short one, then tenant B a short one
        a_long, _ = create_job(client, auth, tiny_teacher_dir, train=256, max_steps=200,
                               batch_size=4)
        a_short, _ = create_job(client, auth, tiny_teacher_dir)
        b_short, _ = create_job(client, other_auth, tiny_teacher_dir)
        done = {b_short: wait_for(client, other_auth, b_short, FINAL)}
        release.touch()
        done |= {job_id: wait_for(client, auth, job_id, FINAL) for job_id in (a_long, a_short)}
    finally:
        for proc in procs:
            stop_worker(proc)

    # Then every job ran once, B's while A's second waited for A's first to end
    assert {(j["status"], j["attempts"]) for j in done.values()} == {("succeeded", 1)}
    b_started, _ = times(settings, b_short)
    _, a_long_finished = times(settings, a_long)
    a_short_started, _ = times(settings, a_short)
    assert b_started < a_long_finished <= a_short_started
