"""An uploaded .gguf file: written to a scratch file, its header checked before anything is
allocated (`distillation.models.gguf.check_gguf`), then converted into the Hugging Face folder
the service stores. Any problem is a 400 `invalid_gguf` naming it."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import BinaryIO

from app.kit.errors import InvalidRequest
from app.storage import local
from distillation.models.files import UnsafeModel
from distillation.models.gguf import MAGIC, check_gguf_stream
from distillation.models.gguf_convert import convert_gguf

# A conversion holds the whole dequantised model in memory: one at a time per process.
_converting = threading.Lock()


def invalid_gguf(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="file", code="invalid_gguf")


def is_gguf_upload(filename: str | None, fileobj: BinaryIO) -> bool:
    """A .gguf file by its name or its first bytes (read, then the stream is rewound)."""
    head = fileobj.read(len(MAGIC))
    fileobj.seek(0)
    return head == MAGIC or (filename or "").lower().endswith(".gguf")


def convert_uploaded_gguf(fileobj: BinaryIO, dest: Path, *, max_parameters: int) -> None:
    """Check and convert an uploaded GGUF file (a seekable stream) into a Hugging Face folder at
    `dest` (absent). The header is checked where the upload was received, before it is copied."""
    size = fileobj.seek(0, os.SEEK_END)
    try:
        check_gguf_stream(fileobj, size, max_parameters=max_parameters)
    except UnsafeModel as exc:
        raise invalid_gguf(f"The GGUF file was refused: {exc}.") from exc
    fileobj.seek(0)
    scratch = local.staging_dir(dest.parent, prefix=".tmp-gguf-")
    try:
        path = scratch / "model.gguf"  # transformers reads a file by its folder and name
        with path.open("wb") as out:
            shutil.copyfileobj(fileobj, out, local.CHUNK)
        with _converting:
            convert_gguf(path, dest, max_parameters=max_parameters)
    except UnsafeModel as exc:  # InvalidGguf, and the checks of the folder it converts to
        raise invalid_gguf(f"The GGUF file was refused: {exc}.") from exc
    finally:
        local.remove(scratch)
