"""Directories in the object store: uploaded a file at a time with a marker last, downloaded
whole or not at all.

A directory is published by a marker written after its files (a model's `.manifest.json`, a
checkpoint's `checkpoint.json`): a reader goes by the marker alone, so a directory whose upload
was cut short is never read.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from app.storage import local
from app.storage.object_store import ObjectStore


def tree_files(directory: Path) -> dict[str, Path]:
    """A local directory's regular files by relative name, temporary leftovers skipped."""
    return {path.relative_to(directory).as_posix(): path
            for path in local.regular_files(directory)
            if not any(part.startswith(".tmp-") for part in path.relative_to(directory).parts)}


def upload_tree(store: ObjectStore, src: Path, key: str, *, last: str | None = None
                ) -> dict[str, int]:
    """Upload `src`'s files under `key/`, the file `last` (a marker) after all the others;
    {name: size} of what was uploaded."""
    files = tree_files(src)
    sizes = {}
    for name in sorted(files, key=lambda n: (n == last, n)):
        sizes[name] = files[name].stat().st_size
        store.put_file(f"{key}/{name}", files[name])
    return sizes


def download_tree(store: ObjectStore, key: str, dest: Path, names: Iterable[str]) -> Path:
    """Download `names` from under `key/` into a new `dest`, whole or not at all (a temporary
    sibling renamed into place); a `dest` another thread put there first wins."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name in names:
            store.get_file(f"{key}/{name}", tmp / name)
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
