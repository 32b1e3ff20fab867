"""Datasets: checked in full on upload, stored under the data directory, owned by one tenant;
and the sets the service writes for a tenant (purpose `generated`, registered by the worker)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import BinaryIO

from sqlalchemy.orm import Session

from app.files import repository
from app.files.schemas import GENERATED, UPLOAD_PURPOSES
from app.files.tables import FileRow
from app.kit.clock import now
from app.kit.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from app.kit.ids import new_id
from app.settings import Settings, get_settings
from app.storage import local
from app.storage.object_store import CHUNK, is_remote, open_store, remove_location
from app.storage.scratch import local_file
from distillation.data.records import Limits, RecordError, Summary, TooManyRecords, scan

MAX_FILENAME = 255


def _clean_filename(filename: str | None) -> str:
    # Browsers and curl may send a path; only the last part is the user's file name.
    name = PurePath((filename or "").replace("\\", "/")).name.strip()
    if not name:
        raise InvalidRequest("The uploaded file has no name: send a .jsonl, .csv or .tsv file.",
                             param="file")
    return name[-MAX_FILENAME:]


def _check(stream: BinaryIO, *, name: str, settings: Settings) -> Summary:
    """Read the whole upload once, keeping only its columns and record count (memory bounded by
    the longest line allowed, whatever the file's size)."""
    limits = Limits(max_records=settings.max_records_per_file,
                    max_line_bytes=settings.max_record_bytes)
    stream.seek(0)
    try:
        return scan(stream, filename=name, limits=limits)
    except TooManyRecords as exc:
        raise PayloadTooLarge(f"{name}: {exc}.", param="file", code="too_many_records") from exc
    except RecordError as exc:
        raise InvalidRequest(
            f"{name}: {exc}. Fix the file and upload it again.", param="file", code="invalid_file"
        ) from exc


def create_file(
    *,
    session: Session,
    settings: Settings,
    tenant_id: str,
    filename: str | None,
    stream: BinaryIO,
    size: int,
    purpose: str | None,
) -> FileRow:
    """Check and store an uploaded dataset read from `stream` (a spooled upload, `size` bytes);
    blocking, so call it from a worker thread. The row is committed only once the file is on
    disk; a refused file leaves neither."""
    if purpose == GENERATED:
        raise InvalidRequest(
            f"Files of purpose {GENERATED!r} are written by the service (a job's "
            f"data_generation) and cannot be uploaded; upload with purpose "
            f"{', '.join(UPLOAD_PURPOSES)}.", param="purpose", code="purpose_not_uploadable")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(UPLOAD_PURPOSES)}, got {purpose!r}.",
            param="purpose"
        )
    name = _clean_filename(filename)
    summary = _check(stream, name=name, settings=settings)
    file_id = new_id("file")
    path = _store(settings, file_id, name, stream)
    try:
        row = FileRow(
            id=file_id,
            tenant_id=tenant_id,
            filename=name,
            bytes=size,
            purpose=purpose,
            format=summary.format,
            num_records=summary.num_records,
            columns=summary.columns,
            path=path,
            created_at=now(),
        )
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        remove_location(settings, path)
        raise
    return row


def _store(settings: Settings, file_id: str, name: str, stream: BinaryIO) -> str:
    """Store a new file's bytes (read from the start of `stream`); its location."""
    path = str(local.file_path(settings, file_id, PurePath(name).suffix.lower()))
    stream.seek(0)
    if settings.remote_storage:
        # Its key is new and the row publishes it: nobody reads it before the commit.
        store = open_store(settings)
        store.put_stream(f"files/{PurePath(path).name}", stream)
        return store.url(f"files/{PurePath(path).name}")
    local.atomic_write_stream(Path(path), stream)
    return path


def add_generated_file(*, session: Session, settings: Settings, tenant_id: str, source: Path,
                       filename: str) -> FileRow:
    """Store a copy of a set the service wrote for the tenant (`source`, JSON lines) as a file
    of purpose `generated`, and add its row to the session without committing: the caller
    commits it with whatever it records alongside, or on failure rolls back and removes the
    copy (`remove_location(settings, row.path)`)."""
    columns: dict[str, None] = {}
    count = 0
    with source.open("rb") as stream:
        # The core wrote it: its records are read for the summary only, not checked as an upload.
        for line in stream:
            if line.strip():
                columns.update(dict.fromkeys(json.loads(line)))
                count += 1
        file_id = new_id("file")
        path = _store(settings, file_id, filename, stream)
    row = FileRow(id=file_id, tenant_id=tenant_id, filename=filename, bytes=source.stat().st_size,
                  purpose=GENERATED, format="jsonl", num_records=count, columns=list(columns),
                  path=path, created_at=now())
    session.add(row)
    return row


MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv",
               "tsv": "text/tab-separated-values"}


def file_content(*, session: Session, tenant_id: str, file_id: str,
                 settings: Settings) -> tuple[FileRow, Iterator[bytes]]:
    """The tenant's file (404 as `require_file`) and its bytes, streamed a chunk at a time."""
    row = require_file(session=session, tenant_id=tenant_id, file_id=file_id)
    if is_remote(row.path):
        store = open_store(settings)
        return row, store.iter_bytes(store.key(row.path))
    path = file_path(row, settings=settings)
    if not path.is_file():
        raise NotFound(f"The bytes of file {file_id} are missing on the server.",
                       param="file_id", code="file_missing")

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    return row, chunks()


def get_file(*, session: Session, tenant_id: str, file_id: str) -> FileRow | None:
    """The tenant's file or None (for the jobs service, which reports its own error)."""
    return repository.get_for_tenant(session, tenant_id=tenant_id, file_id=file_id)


def require_file(*, session: Session, tenant_id: str, file_id: str) -> FileRow:
    """The tenant's file, or 404 for a missing id and another tenant's id alike."""
    row = repository.get_for_tenant(session, tenant_id=tenant_id, file_id=file_id)
    if row is None:
        raise NotFound(f"No file with id {file_id!r}.", param="file_id")
    return row


def file_path(row: FileRow, *, settings: Settings | None = None) -> Path:
    """Where the file's bytes are on this machine (its name keeps the extension that
    `records.read_file` reads): with a remote store, a copy pulled into the scratch cache.

    Stored paths are absolute; `settings` places a relative one under the data directory.
    """
    if is_remote(row.path):
        return local_file(settings or get_settings(), row.path)
    path = Path(row.path)
    if not path.is_absolute() and settings is not None:
        return settings.resolved_data_dir / path
    return path


def list_files(
    *, session: Session, tenant_id: str, limit: int, after: str | None, purpose: str | None
) -> list[FileRow]:
    """Up to `limit + 1` files, newest first (the extra row tells the caller `has_more`)."""
    cursor = None
    if after is not None:
        cursor = repository.get_for_tenant(session, tenant_id=tenant_id, file_id=after)
        if cursor is None:
            raise InvalidRequest(f"Unknown cursor {after!r}: pass the id of a listed file.",
                                 param="after")
    return repository.list_for_tenant(
        session, tenant_id=tenant_id, limit=limit + 1, after=cursor, purpose=purpose
    )


def delete_file(*, session: Session, tenant_id: str, file_id: str) -> None:
    """Delete a file unless an unfinished job reads it (409)."""
    row = require_file(session=session, tenant_id=tenant_id, file_id=file_id)
    jobs = repository.active_jobs_using(session, tenant_id=tenant_id, file_id=file_id)
    if jobs:
        raise Conflict(
            f"File {file_id} is used by unfinished job(s) {', '.join(sorted(jobs))}; cancel them "
            "or wait until they finish.",
            param="file_id",
            code="file_in_use",
        )
    location = row.path if is_remote(row.path) else str(file_path(row))
    session.delete(row)
    session.commit()
    # After the commit: a failed commit must not leave a row whose file is gone.
    remove_location(get_settings(), location)
