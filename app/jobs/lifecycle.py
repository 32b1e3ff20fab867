"""Job state transitions: a cancel from the API, a worker's claim, heartbeat and finish, and the
reconciler's pass.

Every transition is one conditional UPDATE, so two workers (or a worker, the reconciler and a
cancel) can never both win: the queue's guarantees rest on these statements, not on the broker.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.jobs import repository
from app.jobs.queue import send_wakeup
from app.jobs.status import IN_PROGRESS, JobStatus
from app.jobs.tables import JobRow
from app.kit.clock import now
from app.settings import Settings

log = logging.getLogger(__name__)


def is_queued(session: Session, *, job_id: str) -> bool:
    return session.scalar(select(JobRow.status).where(JobRow.id == job_id)) == JobStatus.QUEUED


def request_cancel(session: Session, *, job_id: str) -> JobStatus | None:
    """A queued job is cancelled at once, a running one becomes `cancelling` (its worker stops
    within a heartbeat); the new status, or None when the job had finished meanwhile. Each is a
    conditional update, so a job that finishes or is claimed in between is not overwritten."""
    t = now()
    for old, new, values, message in (
        (JobStatus.QUEUED, JobStatus.CANCELLED, {"finished_at": t},
         "Job cancelled before it started."),
        (JobStatus.RUNNING, JobStatus.CANCELLING, {}, "Cancellation requested."),
        (JobStatus.CANCELLING, JobStatus.CANCELLING, {}, None),
    ):
        result = session.execute(
            update(JobRow).where(JobRow.id == job_id, JobRow.status == old)
            .values(status=new, **values)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            if message:
                repository.add_event(session, job_id=job_id, message=message)
            return new
    return None


def claim(session: Session, *, job_id: str, worker_id: str) -> JobRow | None:
    """Atomically move a `queued` job to `running` for this worker; None if someone else has it."""
    t = now()
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, worker_id=worker_id, heartbeat_at=t, started_at=t,
                attempts=JobRow.attempts + 1)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    session.commit()
    job = session.get(JobRow, job_id, populate_existing=True)
    return job


def heartbeat(session: Session, *, job_id: str, worker_id: str) -> str | None:
    """Refresh this worker's lease; the job's status, or None when the lease was lost."""
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.worker_id == worker_id, JobRow.status.in_(IN_PROGRESS))
        .values(heartbeat_at=now())
    )
    session.commit()
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.scalar(select(JobRow.status).where(JobRow.id == job_id))


def record_progress(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    progress: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    values: dict[str, Any] = {"heartbeat_at": now()}
    if progress is not None:
        values["progress"] = progress
    if metrics is not None:
        values["metrics"] = metrics
    session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.worker_id == worker_id, JobRow.status.in_(IN_PROGRESS))
        .values(**values)
    )


def finish(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    status: str,
    error: dict[str, Any] | None = None,
    result_model: str | None = None,
    teacher_model: str | None = None,
    metrics: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    from_statuses: tuple[str, ...] = IN_PROGRESS,
) -> bool:
    """End this worker's run with `status` (and, when it succeeded, its student and fine-tuned
    teacher); False if the job is no longer this worker's (or not in one of `from_statuses`)."""
    values: dict[str, Any] = {"status": status, "finished_at": now(), "error": error,
                              "result_model": result_model, "finetuned_teacher_id": teacher_model}
    if metrics is not None:
        values["metrics"] = metrics
    if progress is not None:
        values["progress"] = progress
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.worker_id == worker_id,
               JobRow.status.in_(from_statuses))
        .values(**values)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, *, job_id: str, worker_id: str, message: str) -> str | None:
    """This worker hands its running job back: `running` becomes `queued` again (its checkpoints
    stay for the next attempt) and `cancelling` becomes `cancelled`; the new status, or None if
    the job is no longer this worker's."""
    t = now()
    for old, new, extra in ((JobStatus.RUNNING, JobStatus.QUEUED, {"enqueued_at": t}),
                            (JobStatus.CANCELLING, JobStatus.CANCELLED, {"finished_at": t})):
        result = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.worker_id == worker_id, JobRow.status == old)
            .values(status=new, worker_id=None, **extra)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            repository.add_event(session, job_id=job_id, level="warning",
                                 message=f"{message} Job {new}.")
            return new
    return None


def stale_queued(session: Session, *, older_than: float) -> list[str]:
    """Queued jobs whose wake-up message went out before `older_than` (maybe lost)."""
    return list(
        session.scalars(
            select(JobRow.id).where(JobRow.status == JobStatus.QUEUED,
                                    JobRow.enqueued_at < older_than)
        )
    )


def mark_enqueued(session: Session, *, job_id: str) -> None:
    session.execute(
        update(JobRow).where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED)
        .values(enqueued_at=now())
    )


def stale_running(session: Session, *, older_than: float) -> list[JobRow]:
    """Running (or cancelling) jobs whose worker has not beaten since `older_than`."""
    return list(
        session.scalars(
            select(JobRow).where(JobRow.status.in_(IN_PROGRESS), JobRow.heartbeat_at < older_than)
        )
    )


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
    if new_status == JobStatus.QUEUED:
        values["enqueued_at"] = now()
    else:
        values["finished_at"] = now()
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
    went silent, and re-send the wake-up of queued jobs nobody claimed. Returns the job ids it
    re-sent, re-queued, failed or cancelled. Safe to run anywhere, any number of times."""
    done: dict[str, list[str]] = {"resent": [], "queued": [], "failed": [], "cancelled": []}
    t = now()
    for job in stale_running(session, older_than=t - settings.stale_heartbeat_after_s):
        status = recover_stale(session, job=job, max_attempts=settings.max_attempts)
        if status is not None:
            done[status].append(job.id)
    session.commit()
    for job_id in done["queued"]:
        send_wakeup(job_id, settings=settings)
    for job_id in stale_queued(session, older_than=t - settings.queued_resend_after_s):
        if send_wakeup(job_id, settings=settings):
            mark_enqueued(session, job_id=job_id)
            done["resent"].append(job_id)
    session.commit()
    if any(done.values()):
        log.info("reconciler: %s", {k: v for k, v in done.items() if v})
    return done
