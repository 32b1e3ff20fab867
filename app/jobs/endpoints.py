"""`/v1/distillation/jobs`: thin routes over the job service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from sse_starlette import EventSourceResponse

from app.auth.limits import charge_refused_job
from app.deps import SessionDep, SettingsDep, TenantDep
from app.jobs import service
from app.jobs.admission import validation_slot
from app.jobs.schemas import CheckpointOut, JobCreate, JobEventOut, JobOut
from app.jobs.stream import event_stream_response, job_watcher
from app.kit.errors import InvalidRequest
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
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> JobOut:
    """Create a job; the same Idempotency-Key and body within 24 h returns the original (200).
    A refused job costs more of the key's rate limit than one request (its checks are work)."""
    try:
        with validation_slot(settings):
            job, created = service.create_job(
                session=session, tenant=tenant, settings=settings, request=body,
                idempotency_key=idempotency_key,
            )
    except InvalidRequest:
        charge_refused_job(authorization=authorization or "", settings=settings)
        raise
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


@router.get("/{job_id}/events", response_model=ListResponse[JobEventOut],
            responses={200: {"content": {"text/event-stream": {}}}})
def list_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    # Out of the schema: a fuzzer that set it would wait on a stream that ends only with the job.
    stream: Annotated[bool, Query(include_in_schema=False)] = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID",
                                                include_in_schema=False)] = None,
) -> ListResponse[JobEventOut] | EventSourceResponse:
    """The job's events, oldest first; poll with `after=<last event id>` for new ones.

    `stream=true` answers `text/event-stream` instead: `job.update` (the job object) on connect
    and whenever it changes, each event as `job.event` (its id as the SSE id), and `end` once
    the job has finished; a `Last-Event-ID` header (or `after`) resumes after that event."""
    if not stream:
        rows = service.list_events(session=session, tenant=tenant, job_id=job_id, after=after,
                                   limit=limit + 1)
        return page([service.event_to_out(r) for r in rows], limit=limit,
                    ids=[f"event-{r.seq}" for r in rows])
    resume = last_event_id or after
    # Checks the job is the tenant's (404) and the id is well-formed (400) before streaming.
    service.list_events(session=session, tenant=tenant, job_id=job_id, after=resume, limit=1)
    # The request's session would otherwise keep its connection until the stream ends (FastAPI
    # closes dependencies after the response); each read opens its own instead.
    session.close()
    watcher = job_watcher(request.app.state, settings)
    slot = watcher.reserve(tenant.id)  # 429 over the caps
    return event_stream_response(
        watcher=watcher, slot=slot, tenant_id=tenant.id, job_id=job_id, after=resume,
        ping_interval_s=settings.events_ping_interval_s,
    )


@router.get("/{job_id}/checkpoints", response_model=ListResponse[CheckpointOut])
def list_checkpoints(
    job_id: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> ListResponse[CheckpointOut]:
    """The checkpoints a running or interrupted job has saved, newest first (the newest two)."""
    items = service.list_checkpoints(session=session, tenant=tenant, settings=settings,
                                     job_id=job_id)
    return page(items, limit=len(items), ids=[c.id for c in items])
