"""Where files, models and job outputs live under the data directory, and how they get there.

Framework-free (no FastAPI, no SQLAlchemy) so that the API, the worker and the CLI share it.
Writes are atomic: content goes to a temporary sibling first and is renamed into place, so a
reader never sees half a file and a crash leaves at most a `.tmp-…` leftover.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.settings import Settings

CHUNK = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE


# -- Locations ---------------------------------------------------------------------------------


def file_path(settings: Settings, file_id: str, ext: str) -> Path:
    """Where an uploaded dataset is stored: `files_dir/<file_id><ext>` (ext such as `.jsonl`)."""
    return settings.files_dir / f"{file_id}{ext}"


def model_dir(settings: Settings, model_id: str) -> Path:
    """The Hugging Face directory of a registered model: `models_dir/<model_id>/`."""
    return settings.models_dir / model_id


def job_dir(settings: Settings, job_id: str) -> Path:
    """A job's working directory (checkpoints, caches, export): `jobs_dir/<job_id>/`."""
    return settings.jobs_dir / job_id


def staging_dir(parent: Path, *, prefix: str = ".tmp-") -> Path:
    """A fresh empty directory inside `parent`, on the same file system as its final place."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


# -- Atomic writes and moves -------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_stream(path: Path, stream: BinaryIO) -> None:
    """Copy `stream` (from where it is) to `path` through a temporary sibling and a rename, a
    chunk at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(stream, handle, CHUNK)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def move_dir(src: Path, dst: Path) -> None:
    """Move a directory to `dst` (which must not exist); a copy then a rename across devices."""
    if dst.exists():
        raise FileExistsError(f"{dst} already exists")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
        return
    except OSError:
        pass  # another file system: copy next to the destination, then rename into place
    tmp = dst.parent / f".tmp-{dst.name}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(src, tmp, symlinks=True)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(src, ignore_errors=True)


def remove(path: Path) -> None:
    """Remove a file or a directory tree; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def regular_files(directory: Path) -> list[Path]:
    """The regular files under `directory`, sorted, symlinks skipped (they could point anywhere)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return found


def dir_mtime_ns(directory: Path) -> int:
    """A cheap version stamp for a directory: the latest mtime of it and its top-level entries."""
    stamps = [directory.stat().st_mtime_ns]
    stamps += [p.stat().st_mtime_ns for p in directory.iterdir() if not p.is_symlink()]
    return max(stamps)


# -- tar.gz out: streamed, never held whole in memory ------------------------------------------


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


def iter_tar_gz(directory: Path, *, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """Stream `directory` as a .tar.gz whose members sit at the archive root (`config.json`, ...).

    Written block by block (tar headers, file data in `chunk_size` pieces, padding) so that a
    multi-gigabyte model streams in constant memory.
    """
    sink = _Sink()
    # Level 1: weights barely compress at any level, and the higher ones cost CPU for nothing.
    gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0)  # type: ignore[arg-type]
    for path in regular_files(directory):
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


# -- tar.gz in: only plain files and folders, nothing outside the destination ------------------


class UnsafeArchive(ValueError):
    """An archive that is not a readable .tar.gz or holds a member we refuse to extract."""


@dataclass
class ArchiveMember:
    """A regular file of an archive, with its path relative to the model directory."""

    name: str
    size: int
    member: tarfile.TarInfo


def _clean_name(raw: str) -> PurePosixPath:
    name = raw.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"archive member {raw!r} has an absolute path")
    if ".." in path.parts:
        raise UnsafeArchive(f"archive member {raw!r} points outside the directory ('..')")
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")])


def list_tar_gz(
    tar: tarfile.TarFile, *, max_members: int, max_total_bytes: int
) -> list[ArchiveMember]:
    """Check every member of an open archive and return its regular files.

    Refuses absolute paths, `..`, links, devices and FIFOs; when every file sits inside one
    top-level folder, that folder is dropped from the names.
    """
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UnsafeArchive(f"not a readable .tar.gz archive ({exc})") from exc
    if len(members) > max_members:
        raise UnsafeArchive(f"the archive holds {len(members)} members; the limit is {max_members}")
    files: list[tuple[PurePosixPath, tarfile.TarInfo]] = []
    total = 0
    for member in members:
        path = _clean_name(member.name)
        if member.issym() or member.islnk():
            raise UnsafeArchive(f"archive member {member.name!r} is a link; links are not allowed")
        if member.isdir():
            continue
        if not member.isfile():
            raise UnsafeArchive(f"archive member {member.name!r} is not a regular file")
        if not path.parts:
            raise UnsafeArchive(f"archive member {member.name!r} has an empty name")
        total += member.size
        if total > max_total_bytes:
            raise UnsafeArchive(f"the archive unpacks to more than {max_total_bytes} bytes")
        files.append((path, member))
    tops = {path.parts[0] for path, _ in files}
    strip = len(tops) == 1 and all(len(path.parts) > 1 for path, _ in files)
    return [
        ArchiveMember(
            name=PurePosixPath(*path.parts[1:]).as_posix() if strip else path.as_posix(),
            size=member.size,
            member=member,
        )
        for path, member in files
    ]


def extract_members(tar: tarfile.TarFile, members: list[ArchiveMember], dest: Path) -> None:
    """Copy checked members into `dest` under their cleaned names (never via `extractall`)."""
    root = dest.resolve()
    for item in members:
        target = (root / item.name).resolve()
        if not target.is_relative_to(root):  # belt and braces after _clean_name
            raise UnsafeArchive(f"archive member {item.name!r} points outside the directory")
        source = tar.extractfile(item.member)
        if source is None:
            raise UnsafeArchive(f"archive member {item.name!r} cannot be read")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise UnsafeArchive(f"archive member {item.name!r} clashes with another") from exc
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise UnsafeArchive(f"the archive is truncated or corrupt ({exc})") from exc


def safe_extract_tar_gz(
    fileobj: BinaryIO,
    dest: Path,
    *,
    max_members: int = 10_000,
    max_total_bytes: int,
    check: Callable[[list[ArchiveMember]], None] | None = None,
) -> list[ArchiveMember]:
    """Extract an uploaded .tar.gz into `dest` after checking every member (see `list_tar_gz`).

    `check` sees the member list before anything is written and may raise to refuse it.
    """
    with open_tar_gz(fileobj) as tar:
        members = list_tar_gz(tar, max_members=max_members, max_total_bytes=max_total_bytes)
        if check is not None:
            check(members)
        dest.mkdir(parents=True, exist_ok=True)
        extract_members(tar, members, dest)
    return members


def open_tar_gz(fileobj: BinaryIO) -> tarfile.TarFile:
    """Open an uploaded archive for reading (gzip-compressed tar only)."""
    try:
        return tarfile.open(fileobj=fileobj, mode="r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UnsafeArchive(f"not a readable .tar.gz archive ({exc})") from exc
