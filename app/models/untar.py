"""Unpacking an uploaded .tar.gz in one pass, the stream read by `app.models.tar_stream` (which
applies the size, ratio and header limits as bytes arrive).

Only regular files and folders are written, under cleaned names, into a scratch folder that
becomes the destination only when the whole archive passed; the member count and name lengths
are checked here as each header arrives. Framework-free: the limits are `app.models.archive`'s.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.models.tar_stream import CHUNK, ArchiveLimits, TarStream, UnsafeArchive, next_header, padded

__all__ = ["ArchiveLimits", "ExtractedFile", "UnsafeArchive", "clean_name", "safe_extract_tar_gz"]

_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_REFUSED_TYPES = {
    tarfile.SYMTYPE: "is a symbolic link; links are not allowed",
    tarfile.LNKTYPE: "is a hard link; links are not allowed",
    tarfile.CHRTYPE: "is a character device; only regular files and folders are allowed",
    tarfile.BLKTYPE: "is a block device; only regular files and folders are allowed",
    tarfile.FIFOTYPE: "is a FIFO; only regular files and folders are allowed",
    tarfile.GNUTYPE_SPARSE: "is a sparse file; only regular files and folders are allowed",
}


@dataclass(frozen=True)
class ExtractedFile:
    """A regular file written to the destination, by its path relative to it."""

    name: str
    size: int


def clean_name(raw: str, limits: ArchiveLimits) -> PurePosixPath:
    """A member's path relative to the destination; refused when absolute, escaping or too long."""
    encoded = raw.encode("utf-8")
    if len(encoded) > limits.max_name_bytes:
        raise UnsafeArchive(f"archive member {raw[:80]!r}… has a name longer than "
                            f"{limits.max_name_bytes} bytes")
    name = raw.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"archive member {raw!r} has an absolute path")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafeArchive(f"archive member {raw!r} points outside the directory ('..')")
    parts = [p for p in path.parts if p not in ("", ".")]
    for part in parts:
        if len(part.encode("utf-8")) > limits.max_component_bytes:
            raise UnsafeArchive(f"archive member {raw[:80]!r}… has a file or folder name longer "
                                f"than {limits.max_component_bytes} bytes")
    return PurePosixPath(*parts)


def _write(stream: TarStream, target: Path, size: int, name: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as out:  # "x": never write through something already there
            remaining = size
            while remaining:
                chunk = stream.read(min(remaining, CHUNK))
                out.write(chunk)
                remaining -= len(chunk)
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        raise UnsafeArchive(f"archive member {name!r} clashes with another member") from exc
    padding = padded(size) - size
    if padding:
        stream.read(padding)


def safe_extract_tar_gz(
    fileobj: BinaryIO,
    dest: Path,
    *,
    limits: ArchiveLimits,
    check_name: Callable[[str], None] | None = None,
    check: Callable[[list[ExtractedFile]], None] | None = None,
) -> list[ExtractedFile]:
    """Unpack an uploaded .tar.gz into `dest` (absent or empty), or raise UnsafeArchive.

    `check_name` sees each file's name before its data is read and may raise to refuse it;
    `check` sees the whole list (names relative to `dest`) before `dest` is filled. When every
    file sits inside one top-level folder, that folder is dropped from the names.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-unpack-", dir=dest.parent))
    try:
        files = _unpack(TarStream(fileobj, limits), scratch, limits, check_name)
        tops = {path.parts[0] for path, _ in files}
        strip = len(tops) == 1 and all(len(path.parts) > 1 for path, _ in files)
        root = scratch / next(iter(tops)) if strip else scratch
        extracted = [
            ExtractedFile(name=PurePosixPath(*path.parts[1:]).as_posix() if strip
                          else path.as_posix(), size=size)
            for path, size in files
        ]
        if check is not None:
            check(extracted)
        if dest.exists():
            dest.rmdir()  # it must be empty: nothing of an earlier attempt may mix in
        os.rename(root, dest)
        return extracted
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unpack(stream: TarStream, scratch: Path, limits: ArchiveLimits,
            check_name: Callable[[str], None] | None) -> list[tuple[PurePosixPath, int]]:
    files: list[tuple[PurePosixPath, int]] = []
    members = 0
    while (header := next_header(stream)) is not None:
        members += 1
        if members > limits.max_members:
            raise UnsafeArchive(f"the archive holds more than {limits.max_members} members")
        path = clean_name(header.name, limits)
        refusal = _REFUSED_TYPES.get(header.type)
        if refusal is not None:
            raise UnsafeArchive(f"archive member {header.name!r} {refusal}")
        if header.type == tarfile.DIRTYPE:
            stream.reserve(header.size, f"folder {header.name!r}")
            stream.skip(header.size)
            continue
        if header.type not in _FILE_TYPES:
            raise UnsafeArchive(f"archive member {header.name!r} has an unsupported type "
                                f"{header.type!r}; only regular files and folders are allowed")
        if not path.parts:
            raise UnsafeArchive(f"archive member {header.name!r} has an empty name")
        if check_name is not None:
            check_name(path.as_posix())
        stream.reserve(header.size, f"archive member {header.name!r}")
        stream.mark()
        _write(stream, scratch / path, header.size, header.name)
        files.append((path, header.size))
    return files
