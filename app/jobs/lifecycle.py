"""Job state transitions: a cancel from the API, a worker's claim, heartbeat, writes and finish,
and the reconciler's pass.

Every transition is one conditional UPDATE, so two workers (or a worker, the reconciler and a
cancel) can never both win: the queue's guarantees rest on these statements, not on the broker.

Leases. A claim makes one worker the owner of one attempt of the job: its `Lease` (job id, worker
id, attempt number). Every later write of that worker (heartbeat, progress, metrics, events,
the outcome) goes through `hold`, which refreshes the lease only while it still holds and keeps
the job's row locked to the end of the transaction: what the transaction writes next is written
by the owner, and a worker whose job was re-queued or claimed by another has every write refused.

Fair claiming. A wake-up wakes a worker for its queue: it claims the best claimable job there,
not necessarily the one the message names, and never a job whose tenant already has
`max_running_jobs_per_tenant` jobs running (`fairness.py`).

Time. Leases run on the database's clock (`db_now`): claims, heartbeats and the reconciler's
staleness checks, so a worker whose own clock is off is judged on the reconciler's clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, select, update
from sqlalchemy.orm import Session

from app.jobs import fairness, repository, routing, workspace
from app.jobs.queue import send_wakeup, waiting_wakeups
from app.jobs.status import IN_PROGRESS, JobStatus
from app.jobs.tables import JobRow
from app.kit.clock import db_now
from app.settings import Settings

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """A worker's write was refused: the job is no longer this worker's attempt."""


@dataclass(frozen=True)
class Lease:
    """Who owns a running job: the worker that claimed it, for which attempt."""

    job_id: str
    worker_id: str
    attempt: int


def request_cancel(session: Session, *, job_id: str) -> JobStatus | None:
    """A queued job is cancelled at once, a running one becomes `cancelling` (its worker stops
    within a heartbeat); the new status, or None when the job had finished meanwhile.

    One conditional update decides on the row as it is when the update takes it: a job that a
    worker claims, hands back or finishes meanwhile is cancelled in its new state or, finished,
    left alone (separate updates per status could each miss a job moving between them).
    """
    queued = JobRow.status == JobStatus.QUEUED
    new = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .values(status=case((queued, JobStatus.CANCELLED.value),
                            else_=JobStatus.CANCELLING.value),
                finished_at=case((queued, db_now()), else_=JobRow.finished_at))
        .returning(JobRow.status)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if new is None:
        # Already `cancelling` (nothing to do: it only ever leaves that state finished), or done.
        current = session.scalar(select(JobRow.status).where(JobRow.id == job_id))
        return JobStatus.CANCELLING if current == JobStatus.CANCELLING else None
    message = ("Job cancelled before it started." if new == JobStatus.CANCELLED
               else "Cancellation requested.")
    repository.add_event(session, job_id=job_id, message=message)
    return JobStatus(new)


def claim(session: Session, *, job_id: str, worker_id: str, max_running: int = 0) -> JobRow | None:
    """Atomically move a `queued` job to `running` for this worker, as its next attempt, while its
    tenant has fewer than `max_running` jobs running (0: no limit); None if someone else has it
    or the tenant is at its limit. The lease is `Lease(job.id, worker_id, job.attempts)`."""
    if max_running:
        tenant_id = session.scalar(select(JobRow.tenant_id).where(
            JobRow.id == job_id, JobRow.status == JobStatus.QUEUED))
        if tenant_id is None:
            session.rollback()
            return None
        # Counted under the tenant's lock: a racing claim for the tenant counts this one.
        fairness.lock_tenant(session, tenant_id=tenant_id)
        if fairness.running_jobs(session, tenant_id=tenant_id) >= max_running:
            session.rollback()
            return None
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, worker_id=worker_id, heartbeat_at=db_now(),
                started_at=db_now(), attempts=JobRow.attempts + 1)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    session.commit()
    return session.get(JobRow, job_id, populate_existing=True)


_CLAIM_TRIES = 10


def claim_next(session: Session, *, queue: str, worker_id: str, max_running: int = 0,
               also: str | None = None) -> JobRow | None:
    """Claim the best claimable queued job of `queue` (or `also`, the job the wake-up named) for
    this worker (`fairness.next_job`'s order, `claim`'s limit); None when there is none."""
    for _ in range(_CLAIM_TRIES):  # each miss is a job another worker claimed meanwhile
        job_id = fairness.next_job(session, queue=queue, max_running=max_running, also=also)
        if job_id is None:
            session.rollback()
            return None
        job = claim(session, job_id=job_id, worker_id=worker_id, max_running=max_running)
        if job is not None:
            return job
    return None


def wake_held_back(session: Session, *, tenant_id: str, settings: Settings) -> list[str]:
    """One of the tenant's jobs stopped running: wake a worker for each queue where the limit may
    hold one of its jobs back (their wake-ups were taken without a claim); the jobs named."""
    woken = []
    for queue, job_id in fairness.held_back(session, tenant_id=tenant_id,
                                            settings=settings).items():
        if send_wakeup(job_id, settings=settings, queue=queue):
            mark_enqueued(session, job_id=job_id)
            woken.append(job_id)
    session.commit()
    return woken


def _owned(lease: Lease, statuses: tuple[str, ...] = IN_PROGRESS) -> tuple[ColumnElement[bool], ...]:
    return (JobRow.id == lease.job_id, JobRow.worker_id == lease.worker_id,
            JobRow.attempts == lease.attempt, JobRow.status.in_(statuses))


def hold(session: Session, lease: Lease, *, statuses: tuple[str, ...] = IN_PROGRESS,
         **values: Any) -> bool:
    """Refresh `lease` (and write `values` to the job) if the job is still this attempt's, in
    one of `statuses`; False if not. The row stays locked until the transaction ends."""
    result = session.execute(
        update(JobRow).where(*_owned(lease, statuses)).values(heartbeat_at=db_now(), **values)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def require(session: Session, lease: Lease, **values: Any) -> None:
    """`hold`, raising `LeaseLost` when the job is no longer this attempt's."""
    if not hold(session, lease, **values):
        raise LeaseLost(f"job {lease.job_id} is no longer attempt {lease.attempt} of "
                        f"worker {lease.worker_id}")


def heartbeat(session: Session, lease: Lease) -> str | None:
    """Refresh this worker's lease; the job's status, or None when the lease was lost."""
    if not hold(session, lease):
        session.commit()
        return None
    status = session.scalar(select(JobRow.status).where(JobRow.id == lease.job_id))
    session.commit()
    return status


def finish(
    session: Session,
    lease: Lease,
    *,
    status: str,
    error: dict[str, Any] | None = None,
    result_model: str | None = None,
    teacher_model: str | None = None,
    metrics: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    from_statuses: tuple[str, ...] = IN_PROGRESS,
) -> bool:
    """End this attempt with `status` (and, when it succeeded, its student and fine-tuned
    teacher); False if the job is no longer this attempt's (or not in one of `from_statuses`)."""
    values: dict[str, Any] = {"status": status, "finished_at": db_now(), "error": error,
                              "result_model": result_model, "finetuned_teacher_id": teacher_model}
    if metrics is not None:
        values["metrics"] = metrics
    if progress is not None:
        values["progress"] = progress
    result = session.execute(update(JobRow).where(*_owned(lease, from_statuses)).values(**values))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, lease: Lease, *, message: str) -> str | None:
    """This worker hands its running job back: `running` becomes `queued` again (its checkpoints
    stay for the next attempt) and `cancelling` becomes `cancelled`; the new status, or None if
    the job is no longer this attempt's."""
    for old, new, extra in ((JobStatus.RUNNING, JobStatus.QUEUED, {"enqueued_at": db_now()}),
                            (JobStatus.CANCELLING, JobStatus.CANCELLED,
                             {"finished_at": db_now()})):
        result = session.execute(
            update(JobRow).where(*_owned(lease, (old,))).values(status=new, worker_id=None, **extra)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            repository.add_event(session, job_id=lease.job_id, level="warning",
                                 message=f"{message} Job {new}.")
            return new
    return None


def stale_queued(session: Session, *, older_than_s: float, max_running: int = 0) -> list[str]:
    """Queued jobs whose wake-up message went out more than `older_than_s` ago (maybe lost),
    but for those of tenants at `max_running` (held back, not lost: see `fairness`)."""
    statement = select(JobRow.id).where(JobRow.status == JobStatus.QUEUED,
                                        JobRow.enqueued_at < db_now() - older_than_s)
    if (under := fairness.under_limit(max_running)) is not None:
        statement = statement.where(under)
    return list(session.scalars(statement))


def mark_enqueued(session: Session, *, job_id: str) -> None:
    session.execute(
        update(JobRow).where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED)
        .values(enqueued_at=db_now())
    )


def wakeup_queue(session: Session, *, job_id: str, settings: Settings) -> str:
    """The queue the job's wake-ups go to (`routing.queue_for`: its own, while configured)."""
    job = session.get(JobRow, job_id)
    return routing.queue_for(job, settings=settings) if job is not None else routing.DEFAULT_QUEUE


def stale_running(session: Session, *, older_than_s: float) -> list[JobRow]:
    """Running (or cancelling) jobs whose worker has not beaten for `older_than_s` seconds."""
    return list(session.scalars(
        select(JobRow).where(JobRow.status.in_(IN_PROGRESS),
                             JobRow.heartbeat_at < db_now() - older_than_s)
    ))


def recover_stale(session: Session, *, job: JobRow, max_attempts: int) -> str | None:
    """Re-queue, fail or finish cancelling a job whose worker died; the new status, or None if the
    job changed meanwhile (its worker came back)."""
    assert job.heartbeat_at is not None
    new_status: JobStatus
    if job.status == JobStatus.CANCELLING:
        new_status, error = JobStatus.CANCELLED, None
        message = "The worker stopped while cancelling; job cancelled."
    elif job.attempts < max_attempts:
        new_status, error = JobStatus.QUEUED, None
        message = (f"The worker stopped answering (attempt {job.attempts} of {max_attempts}); "
                   "job re-queued.")
    else:
        new_status = JobStatus.FAILED
        error = {"code": "worker_lost",
                 "message": f"The worker stopped answering {job.attempts} times; giving up."}
        message = error["message"]
    values: dict[str, Any] = {"status": new_status, "error": error, "worker_id": None}
    values["enqueued_at" if new_status == JobStatus.QUEUED else "finished_at"] = db_now()
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job.id, JobRow.status == job.status,
               JobRow.heartbeat_at == job.heartbeat_at)
        .values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    level = "warning" if new_status != JobStatus.FAILED else "error"
    repository.add_event(session, job_id=job.id, message=message, level=level)
    return new_status


def reconcile(session: Session, *, settings: Settings) -> dict[str, list[str]]:
    """One reconciler pass: re-queue (or fail, or finish cancelling) running jobs whose worker
    went silent, and re-send the wake-up of queued jobs whose message is gone from the broker.
    Returns the job ids it re-sent, re-queued, failed or cancelled. Safe to run anywhere, any
    number of times."""
    done: dict[str, list[str]] = {"resent": [], "queued": [], "failed": [], "cancelled": []}
    freed: set[str] = set()  # tenants with a job that stopped running for good
    for job in stale_running(session, older_than_s=settings.stale_heartbeat_after_s):
        status = recover_stale(session, job=job, max_attempts=settings.max_attempts)
        if status is not None:
            done[status].append(job.id)
            if status != JobStatus.QUEUED:
                freed.add(job.tenant_id)
    session.commit()
    for tenant_id in sorted(freed):
        done["resent"] += wake_held_back(session, tenant_id=tenant_id, settings=settings)
    for job_id in done["failed"] + done["cancelled"]:
        workspace.remove(settings, job_id)  # finished for good: no attempt needs its files
    for job_id in done["queued"]:
        send_wakeup(job_id, settings=settings, queue=wakeup_queue(session, job_id=job_id,
                                                                   settings=settings))
    stale = [job_id for job_id in stale_queued(
        session, older_than_s=settings.queued_resend_after_s,
        max_running=settings.max_running_jobs_per_tenant) if job_id not in done["resent"]]
    # A message still waiting in the queue is not lost, only behind busy workers: one
    # outstanding wake-up per job (a broker that cannot be read gets one per interval).
    waiting = waiting_wakeups(settings) if stale else set()
    for job_id in stale:
        if waiting is not None and job_id in waiting:
            continue
        queue = wakeup_queue(session, job_id=job_id, settings=settings)
        if send_wakeup(job_id, settings=settings, queue=queue):
            mark_enqueued(session, job_id=job_id)
            done["resent"].append(job_id)
    session.commit()
    if any(done.values()):
        log.info("reconciler: %s", {k: v for k, v in done.items() if v})
    return done
