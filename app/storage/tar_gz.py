"""Directories and stored files out as a streamed .tar.gz, never held whole in memory."""

from __future__ import annotations

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


def iter_tar_gz(directory: Path, *, chunk_size: int = CHUNK,
                skip_dirs: Collection[str] = ()) -> Iterator[bytes]:
    """Stream `directory` as a .tar.gz whose members sit at the archive root (`config.json`, ...),
    leaving out the top-level folders named in `skip_dirs`.

    Written block by block (tar headers, file data in `chunk_size` pieces, padding) so that a
    multi-gigabyte model streams in constant memory.
    """
    sink = _Sink()
    # Level 1: weights barely compress at any level, and the higher ones cost CPU for nothing.
    gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0)  # type: ignore[arg-type]
    for path in regular_files(directory, skip_dirs=skip_dirs):
        stat = path.stat()
        info = tarfile.TarInfo(path.relative_to(directory).as_posix())
        info.size = stat.st_size
        info.mtime = int(stat.st_mtime)
        info.mode = 0o644
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        with path.open("rb") as handle:
            while chunk := handle.read(chunk_size):
                gz.write(chunk)
                if len(sink.buffer) >= chunk_size:
                    yield sink.take()
        remainder = info.size % _BLOCK
        if remainder:
            gz.write(tarfile.NUL * (_BLOCK - remainder))
    gz.write(tarfile.NUL * (2 * _BLOCK))  # end-of-archive marker
    gz.close()
    yield sink.take()


@dataclass(frozen=True)
class TarEntry:
    name: str
    size: int
    chunks: Callable[[], Iterator[bytes]]


def iter_tar_gz_entries(entries: Iterable[TarEntry], *, chunk_size: int = CHUNK
                        ) -> Iterator[bytes]:
    """Stream entries as a .tar.gz (as `storage.iter_tar_gz` does a local directory): each
    member's bytes are read, compressed and handed out a chunk at a time."""
    sink = _Sink()
    gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0)  # type: ignore[arg-type]
    block = tarfile.BLOCKSIZE
    for entry in entries:
        info = tarfile.TarInfo(entry.name)
        info.size, info.mtime, info.mode = entry.size, int(time.time()), 0o644
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        written = 0
        for chunk in entry.chunks():
            written += len(chunk)
            gz.write(chunk)
            if len(sink.buffer) >= chunk_size:
                yield sink.take()
        if written != entry.size:  # the archive would be corrupt past this point: stop loudly
            raise OSError(f"{entry.name}: read {written} bytes, the manifest says {entry.size}")
        if entry.size % block:
            gz.write(tarfile.NUL * (block - entry.size % block))
    gz.write(tarfile.NUL * (2 * block))
    gz.close()
    yield sink.take()
