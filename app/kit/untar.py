"""Unpacking an uploaded .tar.gz in one pass, with every limit applied while the stream is read.

`tarfile` is not used to walk the archive: it reads a GNU long-name or PAX header whole before
anyone can look at its size (a 100 KB archive can hold a 100 MB name), and `getmembers()` reads
every header of the archive before the first check. Here each 512-byte header is parsed alone
(`TarInfo.frombuf`), its declared size is checked before its data is read, and the member count,
the unpacked size and the compression ratio are checked as the bytes arrive, so a decompression
bomb stops at the first limit it passes. Only regular files and folders are written, under
cleaned names, into a scratch folder that becomes `dest` only when the whole archive passed.
Framework-free, like the rest of `app.kit`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_NAME_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX_HEADERS = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_REFUSED_TYPES = {
    tarfile.SYMTYPE: "is a symbolic link; links are not allowed",
    tarfile.LNKTYPE: "is a hard link; links are not allowed",
    tarfile.CHRTYPE: "is a character device; only regular files and folders are allowed",
    tarfile.BLKTYPE: "is a block device; only regular files and folders are allowed",
    tarfile.FIFOTYPE: "is a FIFO; only regular files and folders are allowed",
    tarfile.GNUTYPE_SPARSE: "is a sparse file; only regular files and folders are allowed",
}
# Extended headers in a row before a member: tar writers emit at most a PAX header and a long
# name and link; more is a way to make the reader loop without a member to count.
_MAX_EXTENDED_IN_A_ROW = 4


class UnsafeArchive(ValueError):
    """An archive that is not a readable .tar.gz, passes a limit or holds a refused member."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may hold; every limit is checked before the bytes past it are read."""

    max_members: int
    max_total_bytes: int  # unpacked: headers, data and padding as they come out of gzip
    max_ratio: int = 100  # unpacked bytes per compressed byte, checked past `ratio_floor_bytes`
    ratio_floor_bytes: int = 16 * 1024 * 1024  # small archives of tiny files compress very well
    max_name_bytes: int = 1024
    max_component_bytes: int = 255  # NAME_MAX of Linux file systems
    max_extended_header_bytes: int = 64 * 1024  # a PAX header: a path and a few attributes


@dataclass(frozen=True)
class ExtractedFile:
    """A regular file written to the destination, by its path relative to it."""

    name: str
    size: int


class _Counted:
    """The compressed upload, counting the bytes gzip reads from it (for the ratio)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


class _Stream:
    """The decompressed tar stream, read in bounded pieces, with the size and ratio limits."""

    def __init__(self, fileobj: BinaryIO, limits: ArchiveLimits) -> None:
        self.raw = _Counted(fileobj)
        self.gz = gzip.GzipFile(fileobj=self.raw, mode="rb")  # type: ignore[call-overload]
        self.limits = limits
        self.out = 0
        self.window = (0, 0)  # (unpacked, compressed) where the current member's data began

    def mark(self) -> None:
        """Start the current member's ratio window: a bomb after a large incompressible member
        is caught by its own ratio, not only by the whole archive's."""
        self.window = (self.out, self.raw.count)

    def read(self, size: int, *, allow_eof: bool = False) -> bytes:
        """Exactly `size` bytes (≤ CHUNK); b"" at a clean end when `allow_eof`."""
        parts: list[bytes] = []
        need = size
        while need:
            try:
                piece = self.gz.read(need)
            except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
                raise UnsafeArchive(f"not a readable .tar.gz archive ({exc})") from exc
            if not piece:
                if allow_eof and need == size:
                    return b""
                raise UnsafeArchive("the archive is truncated (it ends inside a member)")
            parts.append(piece)
            need -= len(piece)
            self._count(len(piece))
        return b"".join(parts)

    def _count(self, n: int) -> None:
        self.out += n
        limits = self.limits
        if self.out > limits.max_total_bytes:
            raise UnsafeArchive(f"the archive unpacks to more than {limits.max_total_bytes} bytes")
        for unpacked, compressed in ((self.out, self.raw.count),
                                     (self.out - self.window[0], self.raw.count - self.window[1])):
            if unpacked > limits.ratio_floor_bytes and unpacked > limits.max_ratio * max(compressed, 1):
                raise UnsafeArchive(
                    f"the archive's compression ratio passed {limits.max_ratio}:1 ({unpacked} "
                    f"bytes unpacked from {compressed}); a decompression bomb is not unpacked"
                )

    def reserve(self, size: int, what: str) -> None:
        """Refuse a member whose declared size would pass the unpacked-size limit, unread."""
        if self.out + _padded(size) > self.limits.max_total_bytes:
            raise UnsafeArchive(
                f"{what} declares {size} bytes: the archive would unpack to more than "
                f"{self.limits.max_total_bytes} bytes"
            )

    def skip(self, size: int) -> None:
        remaining = _padded(size)
        while remaining:
            remaining -= len(self.read(min(remaining, CHUNK)))


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnsafeArchive(f"{what} is not UTF-8") from exc


def _pax_records(data: bytes) -> dict[str, str]:
    """The `length key=value\\n` records of a PAX header (refused when malformed)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        digits = data[pos:space]
        if space < 0 or not digits.isdigit():
            raise UnsafeArchive("a PAX header is malformed (a record without a length)")
        end = pos + int(digits)
        if end <= space or end > len(data) or data[end - 1:end] != b"\n":
            raise UnsafeArchive("a PAX header is malformed (a record's length is wrong)")
        key, sep, value = data[space + 1:end - 1].partition(b"=")
        if not sep:
            raise UnsafeArchive("a PAX header is malformed (a record without '=')")
        records[_text(key, "a PAX header key")] = _text(value, "a PAX header value")
        pos = end
    return records


@dataclass
class _Header:
    name: str
    type: bytes
    size: int


def _next_header(stream: _Stream) -> _Header | None:
    """The next member's header with its long name or PAX records applied; None at the end."""
    limits = stream.limits
    name: str | None = None
    size: int | None = None
    for _ in range(_MAX_EXTENDED_IN_A_ROW + 1):
        block = stream.read(BLOCK, allow_eof=True)
        if not block or block == tarfile.NUL * BLOCK:
            return None  # the end-of-archive marker (or a writer that left it out)
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError) as exc:
            raise UnsafeArchive(f"not a readable tar archive ({exc})") from exc
        if info.size < 0:
            raise UnsafeArchive(f"archive member {info.name!r} declares a negative size")
        if info.type in _NAME_HEADERS:
            if info.size > limits.max_name_bytes:
                raise UnsafeArchive(
                    f"a GNU long-name header of {info.size} bytes: names longer than "
                    f"{limits.max_name_bytes} bytes are not accepted"
                )
            value = _text(stream.read(_padded(info.size))[:info.size], "a member name")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                name = value
            continue  # a long link target: the member it belongs to is refused anyway
        if info.type in _PAX_HEADERS or info.type == tarfile.XGLTYPE:
            if info.size > limits.max_extended_header_bytes:
                raise UnsafeArchive(
                    f"a PAX extended header of {info.size} bytes: the limit is "
                    f"{limits.max_extended_header_bytes} bytes"
                )
            records = _pax_records(stream.read(_padded(info.size))[:info.size])
            if any(key.startswith("GNU.sparse") for key in records):
                raise UnsafeArchive("the archive holds a sparse file; only regular files are allowed")
            if info.type == tarfile.XGLTYPE:
                if {"path", "linkpath", "size"} & set(records):
                    raise UnsafeArchive("a global PAX header sets names or sizes; not supported")
                continue  # comments (`git archive`) and times: nothing that changes what is read
            name = records.get("path", name)
            if "size" in records:
                if not records["size"].isdigit():
                    raise UnsafeArchive("a PAX header declares a size that is not a number")
                size = int(records["size"])
            continue
        return _Header(name=name if name is not None else info.name, type=info.type,
                       size=size if size is not None else info.size)
    raise UnsafeArchive("the archive holds extended headers with no member after them")


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


def _write(stream: _Stream, target: Path, size: int, name: str) -> None:
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
    padding = _padded(size) - size
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
        files = _unpack(_Stream(fileobj, limits), scratch, limits, check_name)
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


def _unpack(stream: _Stream, scratch: Path, limits: ArchiveLimits,
            check_name: Callable[[str], None] | None) -> list[tuple[PurePosixPath, int]]:
    files: list[tuple[PurePosixPath, int]] = []
    members = 0
    while (header := _next_header(stream)) is not None:
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
