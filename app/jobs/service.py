"""Distillation jobs as the API sees them: create (idempotently), list, get, cancel, events."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.tables import TenantRow
from app.jobs import lifecycle, repository, resources, routing, workspace
from app.jobs.core_config import dump_plan, stored_request, with_task_defaults
from app.jobs.queue import send_wakeup
from app.jobs.quota import check_queued_jobs
from app.jobs.schemas import (
    CheckpointOut,
    JobCreate,
    JobErrorOut,
    JobEventOut,
    JobOut,
    ProgressOut,
    ResourcesOut,
)
from app.jobs.status import JobStatus
from app.jobs.tables import IdempotencyKeyRow, JobEventRow, JobRow
from app.jobs.validation import check_job_request
from app.kit.clock import now
from app.kit.errors import Conflict, InvalidRequest, NotFound
from app.kit.ids import new_id
from app.models import repository as models_repository
from app.settings import Settings
from distillation.layout import checkpoint_id
from distillation.layout import list_checkpoints as list_checkpoints_on_disk


def to_out(row: JobRow) -> JobOut:
    req = stored_request(row)
    return JobOut(
        id=row.id,
        status=row.status,
        task=row.task,
        teacher=req.teacher.model_dump(mode="json"),
        student=req.student.model_dump(mode="json"),
        training_file=req.training_file,
        validation_file=req.validation_file,
        transfer_file=req.transfer_file,
        augmentation=req.augmentation.model_dump(mode="json") if req.augmentation else None,
        data=dataclasses.asdict(req.data),
        hyperparameters=req.hyperparameters.model_dump(mode="json"),
        distillation=req.distillation.model_dump(mode="json"),
        generation=req.generation.model_dump(mode="json") if req.generation else None,
        data_generation=req.data_generation.model_dump(mode="json")
        if req.data_generation else None,
        metadata=req.metadata,
        progress=ProgressOut(**row.progress),
        metrics=row.metrics,
        result_model=row.result_model,
        teacher_model=row.finetuned_teacher_id,
        error=JobErrorOut(**row.error) if row.error else None,
        attempts=row.attempts,
        resources=ResourcesOut(**routing.resources_view(row)),
        created_at=int(row.created_at),
        started_at=int(row.started_at) if row.started_at else None,
        finished_at=int(row.finished_at) if row.finished_at else None,
    )


def event_to_out(row: JobEventRow) -> JobEventOut:
    return JobEventOut(
        id=f"{repository.EVENT_PREFIX}{row.seq}",
        created_at=int(row.created_at),
        level=row.level,
        type=row.type,
        message=row.message,
        data=row.data,
    )


def _stored_model_id(session: Session, tenant: TenantRow, ref: str | None) -> str | None:
    """The id of the tenant's stored model a (validated) ref names; None for a built-in."""
    if ref is None:
        return None
    row = models_repository.get_for_tenant(session, tenant_id=tenant.id, model_id=ref)
    return row.id if row is not None else None


def _request_hash(request: JobCreate) -> str:
    # Defaults left out: a field added to the schema later (with a default) leaves the hash of a
    # body that does not set it as it was, so a retry across a deploy still replays.
    canonical = json.dumps(request.model_dump(mode="json", exclude_defaults=True),
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(
    *, session: Session, tenant: TenantRow, key: str, request_hash: str, settings: Settings
) -> JobRow | None:
    """The job an earlier request with this Idempotency-Key created, or None if there is none."""
    existing = repository.get_idempotency_key(session, tenant_id=tenant.id, key=key)
    if existing is None:
        return None
    if existing.created_at < now() - settings.idempotency_ttl_s:
        session.delete(existing)
        session.flush()
        return None
    if existing.request_hash != request_hash:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body; "
            "use a new key for a new job.",
            param="Idempotency-Key", code="idempotency_key_reused",
        )
    return repository.get_for_tenant(session, tenant_id=tenant.id, job_id=existing.job_id)


def create_job(
    *,
    session: Session,
    tenant: TenantRow,
    settings: Settings,
    request: JobCreate,
    idempotency_key: str | None = None,
) -> tuple[JobRow, bool]:
    """Validate, insert and commit the job, then wake a worker. Returns (job, created)."""
    request = with_task_defaults(request)
    request_hash = _request_hash(request)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 255:
            raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.",
                                 param="Idempotency-Key")
        replayed = _replay(session=session, tenant=tenant, key=idempotency_key,
                           request_hash=request_hash, settings=settings)
        if replayed is not None:
            return replayed, False

    # Cheap first (a tenant at its limit is refused before the file checks), then again under
    # the tenant's lock once the slow checks are done, so that racing creates keep the limit.
    check_queued_jobs(session, tenant_id=tenant.id, settings=settings)
    checked = check_job_request(session=session, tenant_id=tenant.id, settings=settings,
                                request=request)
    planned = resources.plan_resources(checked=checked, settings=settings)
    check_queued_jobs(session, tenant_id=tenant.id, settings=settings, lock=True)
    created = now()
    job = JobRow(
        id=new_id("job"),
        tenant_id=tenant.id,
        status=JobStatus.QUEUED,
        task=request.task,
        request=request.model_dump(mode="json"),
        plan=dump_plan(checked.plan),
        training_file_id=request.training_file,
        validation_file_id=request.validation_file,
        transfer_file_id=request.transfer_file,
        examples_file_id=request.data_generation.examples_file
        if request.data_generation else None,
        teacher_model_id=_stored_model_id(session, tenant, request.teacher.model),
        student_model_id=_stored_model_id(session, tenant, request.student.model),
        progress=ProgressOut().model_dump(),
        metrics={"train_loss": None, "eval": {}},
        created_at=created,
        enqueued_at=created,
        attempts=0,
        estimated_memory_bytes=planned.memory_bytes,
        queue=planned.queue,
    )
    session.add(job)
    session.flush()
    repository.add_event(session, job_id=job.id, message="Job created and queued.")
    if idempotency_key is not None:
        session.add(IdempotencyKeyRow(tenant_id=tenant.id, key=idempotency_key,
                                      request_hash=request_hash, job_id=job.id, created_at=created))
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        session.rollback()
        replayed = _replay(session=session, tenant=tenant, key=idempotency_key or "",
                           request_hash=request_hash, settings=settings)
        if replayed is None:
            raise
        return replayed, False
    # Only now, with the row committed, may a worker be woken.
    send_wakeup(job.id, settings=settings, queue=planned.queue)
    return job, True


def get_job(*, session: Session, tenant: TenantRow, job_id: str) -> JobRow:
    job = repository.get_for_tenant(session, tenant_id=tenant.id, job_id=job_id)
    if job is None:
        raise NotFound(f"No distillation job with id {job_id!r}.", param="job_id")
    return job


def list_jobs(
    *, session: Session, tenant: TenantRow, limit: int, after: str | None, status: str | None
) -> list[JobRow]:
    if status is not None and status not in list(JobStatus):
        raise InvalidRequest(
            f"Unknown status {status!r}; one of {', '.join(JobStatus)}.", param="status"
        )
    cursor = None
    if after is not None:
        cursor = repository.get_for_tenant(session, tenant_id=tenant.id, job_id=after)
        if cursor is None:
            raise InvalidRequest(f"`after` names no job of yours: {after!r}.", param="after")
    return repository.list_for_tenant(
        session, tenant_id=tenant.id, limit=limit, after=cursor, status=status
    )


def cancel_job(*, session: Session, tenant: TenantRow, job_id: str) -> JobRow:
    """Queued jobs are cancelled at once; running ones become `cancelling` until the worker stops."""
    job = get_job(session=session, tenant=tenant, job_id=job_id)
    if lifecycle.request_cancel(session, job_id=job.id) is None:
        session.rollback()
        session.refresh(job)
        raise Conflict(f"Job {job_id!r} has already finished ({job.status}).",
                       param="id", code="job_finished")
    session.commit()
    session.refresh(job)
    return job


def list_events(
    *, session: Session, tenant: TenantRow, job_id: str, after: str | None, limit: int
) -> list[JobEventRow]:
    job = get_job(session=session, tenant=tenant, job_id=job_id)
    after_seq = None
    if after is not None:
        after_seq = repository.event_seq(after)
        if after_seq is None:
            raise InvalidRequest(f"Malformed event id {after!r} in `after`.", param="after")
    return repository.list_events(session, job_id=job.id, after=after_seq, limit=limit)


def list_checkpoints(
    *, session: Session, tenant: TenantRow, settings: Settings, job_id: str
) -> list[CheckpointOut]:
    """The checkpoints in the job's working directory, newest first (none once it has finished:
    the directory goes when the job does)."""
    job = get_job(session=session, tenant=tenant, job_id=job_id)
    if settings.remote_storage:
        metas = workspace.stored_checkpoints(settings, job.id)
    else:
        work_dir = workspace.checkpoint_work_dir(settings, job.id)
        metas = [meta for _, meta in list_checkpoints_on_disk(work_dir)] if work_dir else []
    return [
        CheckpointOut(id=checkpoint_id(meta["step"]), step=meta["step"],
                      epoch=meta.get("epoch", 0), created_at=int(meta.get("created_at", 0)),
                      train_loss=meta.get("train_loss"), size_bytes=meta.get("size_bytes"))
        for meta in metas
    ]
