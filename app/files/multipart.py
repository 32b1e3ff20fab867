"""Reading a multipart upload with a size limit enforced while the body arrives.

FastAPI's `UploadFile` parameters spool the whole body to disk before the endpoint runs, so a
limit checked there comes after the disk is already full. Here the request stream is counted
as it is read and the upload stops at the limit (413, nothing kept). Shared by `POST /v1/files`
and `POST /v1/models`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.kit.errors import InvalidRequest, PayloadTooLarge

# Room for the multipart boundaries, part headers and small fields such as `purpose`.
FORM_OVERHEAD_BYTES = 64 * 1024


@dataclass
class ReceivedForm:
    """The parsed form: its one uploaded file and its text fields (close `form` when done)."""

    file: UploadFile
    size: int
    fields: dict[str, str]
    form: FormData

    async def close(self) -> None:
        await self.form.close()


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The upload is larger than the limit of {limit} bytes; split it or ask the operator "
        "to raise the limit (DISTILL_MAX_UPLOAD_BYTES).",
        param="file",
        code="file_too_large",
    )


async def _limited(
    stream: AsyncIterator[bytes], limit: int, file_limit: int
) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise _too_large(file_limit)
        yield chunk


def multipart_openapi(fields: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """`openapi_extra` describing a multipart body, since the endpoint reads the stream itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": fields, "required": required}
                }
            },
        }
    }


async def receive_upload(
    request: Request, *, max_file_bytes: int, field: str = "file"
) -> ReceivedForm:
    """Parse a multipart body holding one file in `field`; 413 as soon as it passes the limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest(
            "Send the upload as multipart/form-data with the file in the 'file' field.", param=field
        )
    body_limit = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise _too_large(max_file_bytes)
    async with aclosing(_limited(request.stream(), body_limit, max_file_bytes)) as stream:
        parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=20)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise InvalidRequest(f"Malformed multipart body: {exc.message}", param=field) from exc
    upload = form.get(field)
    if not isinstance(upload, UploadFile):
        await form.close()
        raise InvalidRequest(f"Missing the '{field}' part: attach the file to upload.", param=field)
    size = upload.size if upload.size is not None else 0
    if size > max_file_bytes:
        await form.close()
        raise _too_large(max_file_bytes)
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    return ReceivedForm(file=upload, size=size, fields=fields, form=form)
