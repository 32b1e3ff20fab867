"""Running one job: claim it, build the core's config from the row, train, record the outcome.

Every write after the claim is fenced by the worker's lease (`lifecycle.Lease`): a worker whose
job was taken over has its writes refused, stops, and touches no file but its own attempt's;
only the attempt that records the outcome promotes the export into the model registry and
removes the job's folder.

A job fails only by its own error. A database that stays away longer than `db_write_retry_s`
while the worker records the outcome is the service's fault: the worker hands the job back
(or leaves it to the reconciler) and keeps its folder, so the next attempt resumes from its
checkpoints. So does a worker told to shut down (`SIGTERM`), after a last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.files.service import add_generated_file
from app.jobs import lifecycle, repository, workspace
from app.jobs.core_config import to_job_config
from app.jobs.lifecycle import Lease
from app.jobs.queue import send_wakeup
from app.jobs.status import JobStatus
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from app.kit.logs import job_context
from app.models.service import register_distilled_model
from app.models.store import unpublish_model_dir
from app.settings import Settings
from app.storage.object_store import remove_location
from distillation.config import Cancelled, JobResult
from distillation.engine import run_job
from worker import attempts, metrics, shutdown, store_sync
from worker.db_retry import write_with_retry
from worker.reporter import CANCELLED, LEASE_LOST, SHUTDOWN, DbReporter, eval_view

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _finish(settings: Settings, lease: Lease, *, status: str, message: str,
            level: str = "info", **fields: Any) -> bool:
    """Record this attempt's outcome (and its event) if the job is still its own."""
    def write(session: Session) -> bool:
        if not lifecycle.finish(session, lease, status=status, **fields):
            return False
        repository.add_event(session, job_id=lease.job_id, message=message, level=level)
        return True

    return write_with_retry(settings.sqlalchemy_url, write, within_s=settings.db_write_retry_s)


def _hand_back(settings: Settings, lease: Lease, message: str) -> None:
    """Give the job back for another attempt, its checkpoints kept; if even that cannot be
    written, the reconciler re-queues it (this worker's heartbeat has stopped)."""
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            new_status = lifecycle.release(session, lease, message=message)
            queue = lifecycle.wakeup_queue(session, job_id=lease.job_id, settings=settings)
        if new_status == JobStatus.QUEUED:
            send_wakeup(lease.job_id, settings=settings, queue=queue)
    except SQLAlchemyError:
        log.warning("job %s: could not hand it back; the reconciler will re-queue it",
                    lease.job_id)


def _lost_database(settings: Settings, lease: Lease, exc: BaseException) -> None:
    log.error("job %s: database unavailable past %.0f s (%s); handing the job back",
              lease.job_id, settings.db_write_retry_s, exc)
    _hand_back(settings, lease, f"The worker lost the database ({type(exc).__name__}); its "
                                "checkpoints are kept for the next attempt.")


def execute_job(woken_for: str, *, settings: Settings, queue: str | None = None) -> str | None:
    """Answer the wake-up for job `woken_for` (delivered on `queue`, by default that job's): claim
    the best claimable job of the queue (`fairness`: that job or another) and run it; returns
    its final status, or None if none was claimed (or the job was handed back, or taken over)."""
    worker_id = new_worker_id()
    with session_scope(settings.sqlalchemy_url) as session:
        if queue is None:
            queue = lifecycle.wakeup_queue(session, job_id=woken_for, settings=settings)
        job = lifecycle.claim_next(session, queue=queue, worker_id=worker_id, also=woken_for,
                                   max_running=settings.max_running_jobs_per_tenant)
        if job is None:
            log.info("woken for job %s: nothing to claim in queue %s (claimed, finished or "
                     "cancelled, or its tenants at their running limit)", woken_for, queue)
            return None
        job_id = job.id
        if job_id != woken_for:
            log.info("woken for job %s: claimed job %s of queue %s first (fair order)",
                     woken_for, job_id, queue)
        lease = Lease(job_id=job_id, worker_id=worker_id, attempt=job.attempts)
        repository.add_event(session, job_id=job_id,
                             message=f"Worker {worker_id} started attempt {job.attempts}.")
    started = time.monotonic()
    with job_context(job_id=job_id, attempt=lease.attempt, tenant_id=job.tenant_id), \
            DbReporter(settings=settings, lease=lease, metrics=dict(job.metrics)) as reporter, \
            shutdown.pause_on_sigterm(
                reporter.pause, grace_s=settings.shutdown_grace_s,
                on_deadline=lambda: _hand_back(settings, lease, "The worker shut down before "
                                               "the job reached a checkpoint.")):
        log.info("job %s: attempt %d started", job_id, lease.attempt)
        status = _run(job, lease, reporter, settings=settings)
        log.info("job %s: attempt %d ended: %s", job_id, lease.attempt, status or "interrupted")
    metrics.job_ended(status, time.monotonic() - started)
    _wake_tenant(settings, job.tenant_id)
    if status is not None:
        # Finished for good, by this attempt: nobody needs the job's files any more. A run cut
        # short (a lost lease, the database, a shutdown, the worker's death) keeps them for the
        # attempt that goes on.
        workspace.remove(settings, job_id)
    return status


def _wake_tenant(settings: Settings, tenant_id: str) -> None:
    """This attempt no longer runs: a job of its tenant the running limit held back may run now.
    If the database is away, the reconciler re-sends its wake-up instead."""
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            lifecycle.wake_held_back(session, tenant_id=tenant_id, settings=settings)
    except SQLAlchemyError:
        log.warning("could not wake the held-back jobs of tenant %s; the reconciler will",
                    tenant_id, exc_info=True)


def _run(job: JobRow, lease: Lease, reporter: DbReporter, *, settings: Settings) -> str | None:
    try:
        if settings.remote_storage:  # what earlier attempts published, on any machine
            store_sync.pull(settings, lease.job_id, before=lease.attempt)
        work = attempts.prepare(settings, lease)  # this attempt's folder, from earlier ones'
        config = write_with_retry(
            settings.sqlalchemy_url,
            lambda session: to_job_config(job, session=session, settings=settings),
            within_s=settings.db_write_retry_s)
        hp = config.hyperparameters
        with store_sync.pushing(settings, work):
            result = run_job(config, metrics.MeteredReporter(
                reporter, samples_per_step=hp.batch_size * max(1, hp.gradient_accumulation_steps)))
            reporter.flush()  # the last metrics events, before the outcome
        status = _record_success(job, lease, result, settings=settings, reporter=reporter)
        if status == JobStatus.SUCCEEDED:
            metrics.observe_stage_seconds(result.report)
        return status
    except Cancelled:
        return _stopped(lease, reporter, settings=settings)
    except SQLAlchemyError as exc:
        _lost_database(settings, lease, exc)
        return None
    except Exception as exc:
        # The traceback (the server's code, paths and frames) stays in the server's log; the
        # tenant sees the exception's type and message only.
        log.exception("job %s failed", lease.job_id)
        with contextlib.suppress(Cancelled):
            reporter.flush()
        error = {"code": "training_failed", "message": f"{type(exc).__name__}: {exc}"}
        try:
            failed = _finish(settings, lease, status=JobStatus.FAILED, error=error,
                             message=f"Job failed: {error['message']}", level="error")
        except SQLAlchemyError as db_exc:
            _lost_database(settings, lease, db_exc)
            return None
        if not failed:  # the job is another attempt's now: its files are not ours to delete
            log.warning("job %s: attempt %d failed after losing the job; nothing recorded",
                        lease.job_id, lease.attempt)
            return None
        return JobStatus.FAILED


def _stopped(lease: Lease, reporter: DbReporter, *, settings: Settings) -> str | None:
    """The run stopped on request: lost lease (nothing more to write), shutdown (hand the job
    back), or cancel."""
    if reporter.stop_reason == LEASE_LOST:
        log.warning("job %s: attempt %d lost its lease; another worker owns the job now",
                    lease.job_id, lease.attempt)
        return None
    if reporter.stop_reason == SHUTDOWN:
        _hand_back(settings, lease, "The worker is shutting down; the next attempt goes on "
                                    "from the last checkpoint.")
        return None
    assert reporter.stop_reason in (CANCELLED, None)
    with contextlib.suppress(Cancelled):
        reporter.flush()
    try:
        if _finish(settings, lease, status=JobStatus.CANCELLED, message="Job cancelled."):
            return JobStatus.CANCELLED
        return None
    except SQLAlchemyError as exc:
        _lost_database(settings, lease, exc)
        return None


def _record_success(job: JobRow, lease: Lease, result: JobResult, *, settings: Settings,
                    reporter: DbReporter) -> str | None:
    """Register the student (the teacher the job fine-tuned, the set its teacher wrote) and mark
    the job succeeded in one transaction, if the job is still this attempt's and not being
    cancelled: an acknowledged cancel is honoured even when training got to the end. Only then
    are the exports moved into the registry."""
    metrics = {**reporter.metrics_state, "train_loss": result.train_loss,
               "eval": eval_view(result.eval_metrics)}
    trained = reporter.train_progress

    def record(session: Session) -> bool:
        # The job's row stays locked from here to the commit: no one can take it meanwhile.
        if not lifecycle.hold(session, lease, statuses=(JobStatus.RUNNING,)):
            return False
        # Published in the model store as they are registered: (location, export path) each.
        moved: list[tuple[str, Path]] = []
        generated = None
        try:
            if result.generated_file is not None:
                generated = add_generated_file(
                    session=session, settings=settings, tenant_id=job.tenant_id,
                    source=result.generated_file, filename=f"{job.id}-generated.jsonl")
                result.report.setdefault("data_generation", {})["file"] = generated.id
            model = register_distilled_model(
                session=session, tenant_id=job.tenant_id, job_id=job.id,
                model_dir=result.model_dir, task=result.task, parameters=result.parameters,
                size_bytes=result.size_bytes, labels=result.labels, report=result.report,
                settings=settings,
            )
            moved.append((model.path, result.model_dir))
            teacher_id = None
            if result.teacher is not None:
                teacher = register_distilled_model(
                    session=session, tenant_id=job.tenant_id, job_id=job.id,
                    model_dir=result.teacher.model_dir, task=result.task,
                    parameters=result.teacher.parameters, size_bytes=result.teacher.size_bytes,
                    labels=result.labels, report=result.teacher.report, settings=settings,
                    source="finetuned",
                )
                moved.append((teacher.path, result.teacher.model_dir))
                teacher_id = teacher.id
            done = lifecycle.finish(
                session, lease, status=JobStatus.SUCCEEDED, result_model=model.id,
                teacher_model=teacher_id, metrics=metrics, from_statuses=(JobStatus.RUNNING,),
                progress={"stage": "export", "percent": 100.0, "step": trained.get("step", 0),
                          "total_steps": trained.get("total_steps", 0),
                          "epoch": trained.get("epoch", 0), "eta_seconds": 0.0},
            )
            assert done, "the job's row is locked by this transaction"
            also = f" (fine-tuned teacher: model {teacher_id})" if teacher_id else ""
            generated_id = generated.id if generated is not None else None
            if generated is not None:
                repository.add_event(
                    session, job_id=job.id,
                    message=f"The teacher-written training data is file {generated.id} "
                            f"({generated.num_records} records, purpose generated).",
                    data={"generated_file": generated.id})
            repository.add_event(session, job_id=job.id,
                                 message=f"Job succeeded: model {model.id}{also}.",
                                 data={"model": model.id, "teacher_model": teacher_id,
                                       "generated_file": generated_id, "report": result.report})
            session.commit()
        except BaseException:
            # Not recorded: put the exports back where a retry (or the next attempt) finds them.
            session.rollback()
            for registered, export in moved:
                unpublish_model_dir(settings, registered, back_to=export)
            if generated is not None:
                remove_location(settings, generated.path)
            raise
        return True

    if write_with_retry(settings.sqlalchemy_url, record, within_s=settings.db_write_retry_s):
        return JobStatus.SUCCEEDED

    def cancel_instead(session: Session) -> bool:
        cancelled = lifecycle.finish(session, lease, status=JobStatus.CANCELLED,
                                     from_statuses=(JobStatus.CANCELLING,))
        if cancelled:
            repository.add_event(session, job_id=job.id,
                                 message="Job cancelled (the request came in as it finished).")
        return cancelled

    cancelled = write_with_retry(settings.sqlalchemy_url, cancel_instead,
                                 within_s=settings.db_write_retry_s)
    return JobStatus.CANCELLED if cancelled else None
