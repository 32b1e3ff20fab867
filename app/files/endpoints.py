"""`/v1/files`: upload, list, read, download and delete datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import SessionDep, SettingsDep, TenantDep
from app.files import service
from app.files.multipart import multipart_openapi, receive_upload
from app.files.schemas import UPLOAD_PURPOSES, FileDeleted, FileObject, Purpose
from app.kit.pagination import ListResponse, page

router = APIRouter(prefix="/files", tags=["files"])

UPLOAD_BODY = multipart_openapi(
    {
        "file": {"type": "string", "format": "binary", "description": ".jsonl, .csv or .tsv"},
        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
    },
    required=["file", "purpose"],
)


@router.post("", status_code=201, response_model=FileObject, openapi_extra=UPLOAD_BODY)
async def upload_file(
    request: Request, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> FileObject:
    """Upload a dataset; it is parsed in full and rejected (400, with the line) when malformed.

    The body is spooled to a temporary file as it arrives and checked from there as a stream,
    so the API never holds the upload in memory.
    """
    form = await receive_upload(request, max_file_bytes=settings.max_upload_bytes)
    try:
        row = await run_in_threadpool(
            lambda: service.create_file(
                session=session,
                settings=settings,
                tenant_id=tenant.id,
                filename=form.file.filename,
                stream=form.file.file,
                size=form.size,
                purpose=form.fields.get("purpose"),
            )
        )
    finally:
        await form.close()
    return FileObject.from_row(row)


@router.get("", response_model=ListResponse[FileObject])
def list_files(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
    purpose: Purpose | None = None,
) -> ListResponse[FileObject]:
    """The tenant's files, newest first; page with `after=<last id>`."""
    rows = service.list_files(
        session=session, tenant_id=tenant.id, limit=limit, after=after, purpose=purpose
    )
    return page([FileObject.from_row(r) for r in rows], limit=limit, ids=[r.id for r in rows])


@router.get("/{file_id}", response_model=FileObject)
def get_file(file_id: str, session: SessionDep, tenant: TenantDep) -> FileObject:
    row = service.require_file(session=session, tenant_id=tenant.id, file_id=file_id)
    return FileObject.from_row(row)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {media: {} for media in service.MEDIA_TYPES.values()}}},
)
def download_file(file_id: str, session: SessionDep, settings: SettingsDep,
                  tenant: TenantDep) -> StreamingResponse:
    """The file's bytes as stored (an upload as it was sent, a `generated` set as JSONL)."""
    row, chunks = service.file_content(session=session, tenant_id=tenant.id, file_id=file_id,
                                       settings=settings)
    return StreamingResponse(
        chunks, media_type=service.MEDIA_TYPES.get(row.format, "application/octet-stream"),
        headers={"Content-Disposition": f'attachment; filename="{file_id}.{row.format}"',
                 "Content-Length": str(row.bytes)},
    )


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, session: SessionDep, tenant: TenantDep) -> FileDeleted:
    """Delete a file; 409 while a queued or running job uses it."""
    service.delete_file(session=session, tenant_id=tenant.id, file_id=file_id)
    return FileDeleted(id=file_id)
