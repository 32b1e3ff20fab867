"""Running one job: claim it, build the core's config from the row, train, record the outcome.

A job fails only by its own error. A database that stays away longer than `db_write_retry_s`
while the worker records the outcome is the service's fault: the worker hands the job back
(or leaves it to the reconciler) and keeps its folder, so the next attempt resumes from its
checkpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import traceback
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.jobs import lifecycle, repository
from app.jobs.core_config import to_job_config
from app.jobs.queue import send_wakeup
from app.jobs.status import JobStatus
from app.jobs.tables import JobRow
from app.kit import storage
from app.kit.db import session_scope
from app.models.service import register_distilled_model
from app.settings import Settings
from distillation.config import Cancelled, JobResult
from distillation.engine import run_job
from worker.db_retry import write_with_retry
from worker.reporter import DbReporter, eval_view

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _finish(settings: Settings, job_id: str, worker_id: str, *, status: str, message: str,
            level: str = "info", **fields: Any) -> None:
    def write(session: Session) -> None:
        if lifecycle.finish(session, job_id=job_id, worker_id=worker_id, status=status, **fields):
            repository.add_event(session, job_id=job_id, message=message, level=level)

    write_with_retry(settings.sqlalchemy_url, write, within_s=settings.db_write_retry_s)


def _hand_back(settings: Settings, job_id: str, worker_id: str, exc: BaseException) -> None:
    """The database failed us past every retry: give the job back for another attempt, or, if
    even that cannot be written, leave it to the reconciler (our heartbeat has stopped)."""
    log.error("job %s: database unavailable past %.0f s (%s); handing the job back", job_id,
              settings.db_write_retry_s, exc)
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            new_status = lifecycle.release(
                session, job_id=job_id, worker_id=worker_id,
                message=f"The worker lost the database ({type(exc).__name__}); its checkpoints "
                        "are kept for the next attempt.")
        if new_status == JobStatus.QUEUED:
            send_wakeup(job_id, settings=settings)
    except SQLAlchemyError:
        log.warning("job %s: could not hand it back; the reconciler will re-queue it", job_id)


def execute_job(job_id: str, *, settings: Settings) -> str | None:
    """Run `job_id` if this worker can claim it; returns the final status, or None if not claimed
    (or handed back, or taken over)."""
    worker_id = new_worker_id()
    with session_scope(settings.sqlalchemy_url) as session:
        job = lifecycle.claim(session, job_id=job_id, worker_id=worker_id)
        if job is None:
            log.info("job %s is not queued (already claimed, finished or cancelled); skipping",
                     job_id)
            return None
        repository.add_event(session, job_id=job_id,
                             message=f"Worker {worker_id} started attempt {job.attempts}.")
    job_dir = settings.jobs_dir / job_id
    status: str | None
    with DbReporter(settings=settings, job_id=job_id, worker_id=worker_id,
                    metrics=dict(job.metrics)) as reporter:
        try:
            config = write_with_retry(
                settings.sqlalchemy_url,
                lambda session: to_job_config(job, session=session, settings=settings),
                within_s=settings.db_write_retry_s)
            result = run_job(config, reporter)
            status = _record_success(job, result, settings=settings, worker_id=worker_id,
                                     reporter=reporter)
        except Cancelled:
            if reporter.stop_reason == "lease_lost":
                log.warning("job %s: lease lost; another worker owns it now", job_id)
                return None
            try:
                _finish(settings, job_id, worker_id, status=JobStatus.CANCELLED,
                        message="Job cancelled.")
                status = JobStatus.CANCELLED
            except SQLAlchemyError as exc:
                _hand_back(settings, job_id, worker_id, exc)
                return None
        except SQLAlchemyError as exc:
            _hand_back(settings, job_id, worker_id, exc)
            return None
        except Exception as exc:
            log.exception("job %s failed", job_id)
            error = {"code": "training_failed", "message": f"{type(exc).__name__}: {exc}"}
            trace = traceback.format_exc()[-3500:]
            try:
                _finish(settings, job_id, worker_id, status=JobStatus.FAILED, error=error,
                        message=f"Job failed: {error['message']}", level="error")
            except SQLAlchemyError as db_exc:
                _hand_back(settings, job_id, worker_id, db_exc)
                return None
            reporter.message("Traceback", level="error", data={"traceback": trace})
            status = JobStatus.FAILED
    if status is not None:
        # Finished for good. A run cut short by a lost lease or the database (returned above) or
        # by the worker's death keeps the directory, so the attempt that takes the job over
        # resumes from its checkpoints; and a job another worker took at the last moment (None)
        # is now its own.
        shutil.rmtree(job_dir, ignore_errors=True)
    return status


def _record_success(job: JobRow, result: JobResult, *, settings: Settings, worker_id: str,
                    reporter: DbReporter) -> str | None:
    """Register the student (and the teacher the job fine-tuned) and mark the job succeeded in one
    transaction, unless a cancel came in meanwhile: an acknowledged cancel is honoured even when
    training got to the end."""
    metrics = {**reporter.metrics_state, "train_loss": result.train_loss,
               "eval": eval_view(result.eval_metrics)}
    trained = reporter.train_progress

    def record(session: Session) -> bool:
        # Moved into the model store as they are registered: (store path, export path) each.
        moved: list[tuple[Path, Path]] = []
        try:
            model = register_distilled_model(
                session=session, tenant_id=job.tenant_id, job_id=job.id,
                model_dir=result.model_dir, task=result.task, parameters=result.parameters,
                size_bytes=result.size_bytes, labels=result.labels, report=result.report,
                settings=settings,
            )
            moved.append((Path(model.path), result.model_dir))
            teacher_id = None
            if result.teacher is not None:
                teacher = register_distilled_model(
                    session=session, tenant_id=job.tenant_id, job_id=job.id,
                    model_dir=result.teacher.model_dir, task=result.task,
                    parameters=result.teacher.parameters, size_bytes=result.teacher.size_bytes,
                    labels=result.labels, report=result.teacher.report, settings=settings,
                    source="finetuned",
                )
                moved.append((Path(teacher.path), result.teacher.model_dir))
                teacher_id = teacher.id
            done = lifecycle.finish(
                session, job_id=job.id, worker_id=worker_id, status=JobStatus.SUCCEEDED,
                result_model=model.id, teacher_model=teacher_id, metrics=metrics,
                from_statuses=(JobStatus.RUNNING,),
                progress={"stage": "export", "percent": 100.0, "step": trained.get("step", 0),
                          "total_steps": trained.get("total_steps", 0),
                          "epoch": trained.get("epoch", 0), "eta_seconds": 0.0},
            )
            if not done:  # cancelled, or taken over by another worker: keep nothing
                session.rollback()
                for registered, _ in moved:
                    shutil.rmtree(registered, ignore_errors=True)
                return False
            also = f" (fine-tuned teacher: model {teacher_id})" if teacher_id else ""
            repository.add_event(session, job_id=job.id,
                                 message=f"Job succeeded: model {model.id}{also}.",
                                 data={"model": model.id, "teacher_model": teacher_id,
                                       "report": result.report})
            session.commit()
        except BaseException:
            # Not recorded: put the exports back where a retry (or the next attempt) finds them.
            session.rollback()
            for registered, export in moved:
                if registered.exists():
                    storage.move_dir(registered, export)
            raise
        return True

    if write_with_retry(settings.sqlalchemy_url, record, within_s=settings.db_write_retry_s):
        return JobStatus.SUCCEEDED

    def cancel_instead(session: Session) -> bool:
        cancelled = lifecycle.finish(session, job_id=job.id, worker_id=worker_id,
                                     status=JobStatus.CANCELLED,
                                     from_statuses=(JobStatus.CANCELLING,))
        if cancelled:
            repository.add_event(session, job_id=job.id,
                                 message="Job cancelled (the request came in as it finished).")
        return cancelled

    cancelled = write_with_retry(settings.sqlalchemy_url, cancel_instead,
                                 within_s=settings.db_write_retry_s)
    return JobStatus.CANCELLED if cancelled else None
