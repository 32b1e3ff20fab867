"""A gzip-compressed tar stream read header by header, with every limit checked as bytes arrive.

`tarfile` is not used to walk the archive: it reads a GNU long-name or PAX header whole before
anyone can look at its size (a 100 KB archive can hold a 100 MB name), and `getmembers()` reads
every header of the archive before the first check. Here each 512-byte header is parsed alone
(`TarInfo.frombuf`), an extended header's declared size is checked before its data is read, and
the unpacked size and the compression ratio are checked as gzip emits the bytes, so a
decompression bomb stops at the first limit it passes. `app.models.untar` writes the members.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
_NAME_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_PAX_HEADERS = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
# Extended headers in a row before a member: tar writers emit at most a PAX header and a long
# name and link; more is a way to make the reader loop without a member to count.
_MAX_EXTENDED_IN_A_ROW = 4
# A size past 20 decimal digits passes every limit (and `int` refuses strings past 4,300 digits).
_MAX_SIZE_DIGITS = 20


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


class _Counted:
    """The compressed upload, counting the bytes gzip reads from it (for the ratio)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


class TarStream:
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
        if self.out + padded(size) > self.limits.max_total_bytes:
            raise UnsafeArchive(
                f"{what} declares {size} bytes: the archive would unpack to more than "
                f"{self.limits.max_total_bytes} bytes"
            )

    def skip(self, size: int) -> None:
        remaining = padded(size)
        while remaining:
            remaining -= len(self.read(min(remaining, CHUNK)))


def padded(size: int) -> int:
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


def _pax_size(value: str) -> int:
    """A PAX `size` record: ASCII digits only (`str.isdigit` also takes "²" and "١", which `int`
    refuses or reads as another number), and few enough to be a size at all."""
    if not (value.isascii() and value.isdigit()) or len(value) > _MAX_SIZE_DIGITS:
        raise UnsafeArchive(f"a PAX header declares a size that is not a number of at most "
                            f"{_MAX_SIZE_DIGITS} ASCII digits ({value[:40]!r})")
    return int(value)


@dataclass
class Header:
    name: str
    type: bytes
    size: int


def next_header(stream: TarStream) -> Header | None:
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
            value = _text(stream.read(padded(info.size))[:info.size], "a member name")
            if info.type == tarfile.GNUTYPE_LONGNAME:
                name = value
            continue  # a long link target: the member it belongs to is refused anyway
        if info.type in _PAX_HEADERS or info.type == tarfile.XGLTYPE:
            if info.size > limits.max_extended_header_bytes:
                raise UnsafeArchive(
                    f"a PAX extended header of {info.size} bytes: the limit is "
                    f"{limits.max_extended_header_bytes} bytes"
                )
            records = _pax_records(stream.read(padded(info.size))[:info.size])
            if any(key.startswith("GNU.sparse") for key in records):
                raise UnsafeArchive("the archive holds a sparse file; only regular files are allowed")
            if info.type == tarfile.XGLTYPE:
                if {"path", "linkpath", "size"} & set(records):
                    raise UnsafeArchive("a global PAX header sets names or sizes; not supported")
                continue  # comments (`git archive`) and times: nothing that changes what is read
            name = records.get("path", name)
            if "size" in records:
                size = _pax_size(records["size"])
            continue
        return Header(name=name if name is not None else info.name, type=info.type,
                       size=size if size is not None else info.size)
    raise UnsafeArchive("the archive holds extended headers with no member after them")
