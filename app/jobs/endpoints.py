"""`/v1/distillation/jobs`: thin routes over the job service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from app.deps import SessionDep, SettingsDep, TenantDep
from app.jobs import service
from app.jobs.schemas import CheckpointOut, JobCreate, JobEventOut, JobOut
from app.kit.pagination import ListResponse, page

router = APIRouter(prefix="/distillation/jobs", tags=["distillation jobs"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut)
def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobOut:
    """Create a job; the same Idempotency-Key and body within 24 h returns the original (200)."""
    job, created = service.create_job(
        session=session, tenant=tenant, settings=settings, request=body,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return service.to_out(job)


@router.get("", response_model=ListResponse[JobOut])
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
    status: str | None = None,
) -> ListResponse[JobOut]:
    """The tenant's jobs, newest first; pass the last id as `after` for the next page."""
    rows = service.list_jobs(session=session, tenant=tenant, limit=limit + 1, after=after,
                             status=status)
    return page([service.to_out(r) for r in rows], limit=limit, ids=[r.id for r in rows])


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    return service.to_out(service.get_job(session=session, tenant=tenant, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    """Cancel: `cancelled` at once if queued, `cancelling` while the worker stops; 409 if finished."""
    return service.to_out(service.cancel_job(session=session, tenant=tenant, job_id=job_id))


@router.get("/{job_id}/events", response_model=ListResponse[JobEventOut])
def list_events(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ListResponse[JobEventOut]:
    """The job's events, oldest first; poll with `after=<last event id>` for new ones."""
    rows = service.list_events(session=session, tenant=tenant, job_id=job_id, after=after,
                               limit=limit + 1)
    return page([service.event_to_out(r) for r in rows], limit=limit,
                ids=[f"event-{r.seq}" for r in rows])


@router.get("/{job_id}/checkpoints", response_model=ListResponse[CheckpointOut])
def list_checkpoints(
    job_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> ListResponse[CheckpointOut]:
    """The checkpoints a running or interrupted job has saved, newest first (the newest two)."""
    items = service.list_checkpoints(session=session, tenant=tenant, settings=settings,
                                     job_id=job_id)
    return page(items, limit=len(items), ids=[c.id for c in items])
