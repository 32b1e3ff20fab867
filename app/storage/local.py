"""Where uploaded files and models live under the data directory, and how files get there.

Framework-free (no FastAPI, no SQLAlchemy) so that the API, the worker and the CLI share it.
Writes are atomic: content goes to a temporary sibling first and is renamed into place, so a
reader never sees half a file and a crash leaves at most a `.tmp-…` leftover.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

from app.settings import Settings

CHUNK = 1024 * 1024


# -- Locations ---------------------------------------------------------------------------------


def file_path(settings: Settings, file_id: str, ext: str) -> Path:
    """Where an uploaded dataset is stored: `files_dir/<file_id><ext>` (ext such as `.jsonl`)."""
    return settings.files_dir / f"{file_id}{ext}"


def model_dir(settings: Settings, model_id: str) -> Path:
    """The Hugging Face directory of a registered model: `models_dir/<model_id>/`."""
    return settings.models_dir / model_id


def staging_dir(parent: Path, *, prefix: str = ".tmp-") -> Path:
    """A fresh empty directory inside `parent`, on the same file system as its final place."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


# -- Atomic writes and moves -------------------------------------------------------------------


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


def regular_files(directory: Path, *, skip_dirs: Collection[str] = ()) -> list[Path]:
    """The regular files under `directory`, sorted, symlinks skipped (they could point anywhere),
    and none under the top-level folders named in `skip_dirs`."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        if Path(root) == directory:
            dirs[:] = [d for d in dirs if d not in skip_dirs]
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
