"""This process's scratch cache: local copies of stored uploads and models, the least recently
used dropped once the cache passes `DISTILL_SCRATCH_MAX_BYTES`.

With local storage a stored location is its own local copy; with an object store it is
downloaded here first (`app.storage.object_store.scratch_copy` says where).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from app.settings import Settings
from app.storage import local
from app.storage.object_store import is_remote, open_store, scratch_copy


def local_file(settings: Settings, location: str) -> Path:
    """A local copy of a stored upload (uploads never change: cached by name)."""
    if not is_remote(location):
        return Path(location)
    store = open_store(settings)
    key = store.key(location)
    dest = scratch_copy(settings, key)
    if dest.is_file():
        touch(dest)
        return dest
    store.get_file(key, dest)
    trim_scratch(settings, keep=dest)
    return dest


def touch(copy: Path) -> None:
    """Mark a copy as just used (its mtime orders the least recently used first)."""
    with contextlib.suppress(OSError):
        os.utime(copy)


def _copies(settings: Settings) -> list[tuple[int, int, Path]]:
    """(last use, bytes, path) of every copy in the scratch cache: each version of a stored
    model, each upload (job folders and downloads in progress are not copies)."""
    found = []
    candidates = [p for p in settings.files_dir.glob("*") if p.is_file()]
    candidates += [p for p in (settings.resolved_scratch_dir / "models").glob("*/*") if p.is_dir()]
    for path in candidates:
        if path.name.startswith(".tmp-"):
            continue
        try:
            used = path.stat().st_mtime_ns
            size = path.stat().st_size if path.is_file() else sum(
                f.stat().st_size for f in local.regular_files(path))
        except OSError:  # removed meanwhile
            continue
        found.append((used, size, path))
    return found


def trim_scratch(settings: Settings, *, keep: Path) -> None:
    """Remove the least recently used copies until the scratch cache holds at most
    `DISTILL_SCRATCH_MAX_BYTES`, never `keep` (the copy being handed out)."""
    copies = sorted(_copies(settings))
    total = sum(size for _, size, _ in copies)
    for _, size, path in copies:
        if total <= settings.scratch_max_bytes:
            return
        if path == keep:
            continue
        local.remove(path)
        if path.parent.parent.name == "models":
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the model's folder, when that was its last copy
        total -= size
