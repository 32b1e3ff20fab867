"""`client.files`: datasets (.jsonl, .csv, .tsv) for training, validation or transfer."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import IO

import httpx

from distill_client._http import Transport, query
from distill_client.types import Deleted, FileObject, Page

# A path, or (filename, bytes or a binary file object).
FileInput = str | os.PathLike[str] | tuple[str, bytes | IO[bytes]]


class Files:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(self, file: FileInput, *, purpose: str = "train") -> FileObject:
        """Upload a dataset (streamed from disk); the server checks it whole and refuses a
        malformed one (`BadRequestError`, the line in the message). `purpose`: `train`,
        `validation` or `unlabeled`."""
        with contextlib.ExitStack() as stack:
            name, content = _open_upload(file, stack)
            build = functools.partial(_rewound_request, self._t, content, name, purpose)
            # Not repeated once sent: a lost answer may mean the file was stored.
            response = self._t.send(build, idempotent=False)
        return FileObject.model_validate(response.json())

    def list(self, *, limit: int | None = None, after: str | None = None,
             purpose: str | None = None) -> Page[FileObject]:
        """The tenant's files, newest first; pass `page.last_id` as `after` for the next page."""
        params = query(limit=limit, after=after, purpose=purpose)
        return Page[FileObject].model_validate(self._t.request("GET", "/v1/files", params=params)).with_next(
            lambda last: self.list(limit=limit, after=last, purpose=purpose))

    def get(self, file_id: str) -> FileObject:
        return FileObject.model_validate(self._t.request("GET", f"/v1/files/{file_id}"))

    def delete(self, file_id: str) -> Deleted:
        """Delete a file (`ConflictError` while a queued or running job uses it)."""
        return Deleted.model_validate(self._t.request("DELETE", f"/v1/files/{file_id}"))


def _open_upload(file: FileInput, stack: contextlib.ExitStack) -> tuple[str, bytes | IO[bytes]]:
    if isinstance(file, tuple):
        return file
    path = Path(file)
    return path.name, stack.enter_context(path.open("rb"))


def _rewound_request(transport: Transport, content: bytes | IO[bytes], name: str,
                     purpose: str) -> httpx.Request:
    """The upload request, its file read from the start (a retry after a 503 sends it again)."""
    if not isinstance(content, bytes) and content.seekable():
        content.seek(0)
    return transport.http.build_request("POST", "/v1/files", data={"purpose": purpose},
                                        files={"file": (name, content)})

