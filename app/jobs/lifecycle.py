"""Job state transitions made by workers and the reconciler.

Every transition is one conditional UPDATE, so two workers (or a worker and the reconciler) can
never both win: the queue's guarantees rest on these statements, not on the broker.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.jobs import repository
from app.jobs.tables import JobRow
from app.kit.clock import now

RUNNING = ("running", "cancelling")


def claim(session: Session, *, job_id: str, worker_id: str) -> JobRow | None:
    """Atomically move a `queued` job to `running` for this worker; None if someone else has it."""
    t = now()
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == "queued")
        .values(status="running", worker_id=worker_id, heartbeat_at=t, started_at=t,
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
        .where(JobRow.id == job_id, JobRow.worker_id == worker_id, JobRow.status.in_(RUNNING))
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
        .where(JobRow.id == job_id, JobRow.worker_id == worker_id, JobRow.status.in_(RUNNING))
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
    metrics: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    from_statuses: tuple[str, ...] = RUNNING,
) -> bool:
    """End this worker's run with `status`; False if the job is no longer this worker's (or not
    in one of `from_statuses`)."""
    values: dict[str, Any] = {"status": status, "finished_at": now(), "error": error,
                              "result_model": result_model}
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
    for old, new, extra in (("running", "queued", {"enqueued_at": t}),
                            ("cancelling", "cancelled", {"finished_at": t})):
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
            select(JobRow.id).where(JobRow.status == "queued", JobRow.enqueued_at < older_than)
        )
    )


def mark_enqueued(session: Session, *, job_id: str) -> None:
    session.execute(
        update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
        .values(enqueued_at=now())
    )


def stale_running(session: Session, *, older_than: float) -> list[JobRow]:
    """Running (or cancelling) jobs whose worker has not beaten since `older_than`."""
    return list(
        session.scalars(
            select(JobRow).where(JobRow.status.in_(RUNNING), JobRow.heartbeat_at < older_than)
        )
    )


def recover_stale(session: Session, *, job: JobRow, max_attempts: int) -> str | None:
    """Re-queue, fail or finish cancelling a job whose worker died; the new status, or None if the
    job changed meanwhile (its worker came back)."""
    assert job.heartbeat_at is not None
    if job.status == "cancelling":
        new_status, error = "cancelled", None
        message = "The worker stopped while cancelling; job cancelled."
    elif job.attempts < max_attempts:
        new_status, error = "queued", None
        message = (f"The worker stopped answering (attempt {job.attempts} of {max_attempts}); "
                   "job re-queued.")
    else:
        new_status = "failed"
        error = {"code": "worker_lost",
                 "message": f"The worker stopped answering {job.attempts} times; giving up."}
        message = error["message"]
    values: dict[str, Any] = {"status": new_status, "error": error, "worker_id": None}
    if new_status == "queued":
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
    level = "warning" if new_status != "failed" else "error"
    repository.add_event(session, job_id=job.id, message=message, level=level)
    return new_status
