"""Directories and stored files out as a streamed .tar.gz, never held whole in memory: one
writer (`iter_tar_gz_entries`) over entries that each hand out their bytes a chunk at a time, a
local directory being one source of entries (`iter_tar_gz`), a stored model another
(`app.models.store`)."""

from __future__ import annotations

import functools
import gzip
import tarfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.storage.local import CHUNK, regular_files

_BLOCK = tarfile.BLOCKSIZE


class _Sink:
    """A write-only file that collects what gzip emits, for the generator to hand out."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


@dataclass(frozen=True)
class TarEntry:
    """One member: its name in the archive, its size, its bytes (read when the member is written)
    and its modification time (None: the time it is written)."""

    name: str
    size: int
    chunks: Callable[[], Iterator[bytes]]
    mtime: int | None = None


def iter_tar_gz_entries(entries: Iterable[TarEntry], *, chunk_size: int = CHUNK
                        ) -> Iterator[bytes]:
    """Stream entries as a .tar.gz, written block by block (tar headers, each member's bytes as
    they are read, padding) and handed out `chunk_size` at a time, so that a multi-gigabyte model
    streams in constant memory."""
    sink = _Sink()
    # Level 1: weights barely compress at any level, and the higher ones cost CPU for nothing.
    gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0)  # type: ignore[arg-type]
    for entry in entries:
        info = tarfile.TarInfo(entry.name)
        info.size, info.mode = entry.size, 0o644
        info.mtime = int(time.time()) if entry.mtime is None else entry.mtime
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        written = 0
        for chunk in entry.chunks():
            written += len(chunk)
            gz.write(chunk)
            if len(sink.buffer) >= chunk_size:
                yield sink.take()
        if written != entry.size:  # the archive would be corrupt past this point: stop loudly
            raise OSError(f"{entry.name}: read {written} bytes, expected {entry.size}")
        if entry.size % _BLOCK:
            gz.write(tarfile.NUL * (_BLOCK - entry.size % _BLOCK))
    gz.write(tarfile.NUL * (2 * _BLOCK))  # end-of-archive marker
    gz.close()
    yield sink.take()


def _file_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _directory_entries(directory: Path, chunk_size: int, skip_dirs: Collection[str]
                       ) -> Iterator[TarEntry]:
    for path in regular_files(directory, skip_dirs=skip_dirs):
        stat = path.stat()
        yield TarEntry(path.relative_to(directory).as_posix(), stat.st_size,
                       functools.partial(_file_chunks, path, chunk_size),
                       mtime=int(stat.st_mtime))


def iter_tar_gz(directory: Path, *, chunk_size: int = CHUNK,
                skip_dirs: Collection[str] = ()) -> Iterator[bytes]:
    """Stream `directory` as a .tar.gz whose members sit at the archive root (`config.json`, ...),
    leaving out the top-level folders named in `skip_dirs`."""
    return iter_tar_gz_entries(_directory_entries(directory, chunk_size, skip_dirs),
                               chunk_size=chunk_size)
