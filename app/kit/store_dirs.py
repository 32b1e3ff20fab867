"""Directories in the store: published whole or not at all, pulled into a local cache, streamed
out as a .tar.gz. The boundary between the store and the local folders the training core and the
predictor work in: with local storage each function is what the code always did (a rename, the
path itself); with an object store it uploads or downloads.

A directory is published by a marker written after its files: a model directory by
`.manifest.json` (its files and sizes; also its content stamp), a checkpoint by its
`checkpoint.json`. A reader goes by the marker alone, so a directory whose upload was cut short
is never read; a model's row is written only after its manifest, so it is never served either.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.kit import storage
from app.kit.store import ObjectStore, is_remote, open_store, scratch_copy
from app.settings import Settings

MANIFEST = ".manifest.json"
# Files predict-time and validation-time readers of a model never need: its weights, its exports.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".data")
_MANIFEST_TTL_S = 5.0
_manifests: dict[str, tuple[float, bytes | None]] = {}
_manifests_lock = threading.Lock()


def tree_files(directory: Path) -> dict[str, Path]:
    """A local directory's regular files by relative name, temporary leftovers skipped."""
    return {path.relative_to(directory).as_posix(): path
            for path in storage.regular_files(directory)
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


# -- model directories -------------------------------------------------------------------------


def publish_model_dir(settings: Settings, src: Path, model_id: str) -> str:
    """Put a checked model directory in the store as model `model_id`; its location for the row.

    Local: renamed into `models/` (the source is gone). Remote: uploaded, then its manifest (the
    source stays; the caller removes it). Either way, nothing is left behind on failure."""
    if not settings.remote_storage:
        final = storage.model_dir(settings, model_id)
        storage.move_dir(src, final)
        return str(final)
    store = open_store(settings)
    key = f"models/{model_id}"
    try:
        sizes = upload_tree(store, src, key)
        store.put_bytes(f"{key}/{MANIFEST}", json.dumps(
            {"files": sizes, "created_at": int(time.time())}, sort_keys=True).encode())
    except BaseException:
        store.remove_prefix(key)
        raise
    return store.url(key)


def unpublish_model_dir(settings: Settings, location: str, *, back_to: Path) -> None:
    """Undo `publish_model_dir` (its row was not written): the local export is where it was."""
    if is_remote(location):
        open_store(settings).remove_prefix(open_store(settings).key(location))
    elif Path(location).exists():
        storage.move_dir(Path(location), back_to)


def _manifest(settings: Settings, location: str, *, fresh: bool = False) -> bytes | None:
    """A stored model's manifest (memoised a few seconds: predict asks on every call)."""
    now = time.monotonic()
    with _manifests_lock:
        hit = _manifests.get(location)
    if hit is not None and not fresh and now - hit[0] < _MANIFEST_TTL_S:
        return hit[1]
    store = open_store(settings)
    data = store.read_bytes(f"{store.key(location)}/{MANIFEST}")
    with _manifests_lock:
        _manifests[location] = (now, data)
    return data


def stored_model_files(settings: Settings, location: str) -> dict[str, int] | None:
    """A published model's files and sizes; None when it has no manifest (never published)."""
    data = _manifest(settings, location, fresh=True)
    if data is None:
        return None
    files: dict[str, int] = json.loads(data)["files"]
    return files


def local_model_dir(settings: Settings, location: str, *, weights: bool = True) -> Path:
    """A local directory holding the model stored at `location`, to load or inspect.

    Local storage: the directory itself. Remote: a copy in the scratch cache, keyed by the
    model's id and its manifest's hash (a changed model is a new folder; older copies of it are
    dropped); `weights=False` copies everything but the weights (config, tokenizer: enough to
    validate a job). FileNotFoundError when the model was never published whole."""
    if not is_remote(location):
        return Path(location)
    store = open_store(settings)
    key = store.key(location)
    home = scratch_copy(settings, key)
    data = _manifest(settings, location)
    if data is None:
        storage.remove(home)  # deleted (by another process): its copies are never read again
        raise FileNotFoundError(f"{location} has no {MANIFEST}: its upload never finished")
    stamp = hashlib.sha256(data).hexdigest()[:16]
    dest = home / (stamp if weights else f"{stamp}-light")
    if dest.is_dir():
        _touch(dest)
        return dest
    names = [name for name in json.loads(data)["files"]
             if weights or not name.endswith(WEIGHT_SUFFIXES)]
    download_tree(store, key, dest, names)
    for old in home.iterdir():  # earlier contents of this model: never read again
        if not old.name.startswith((stamp, ".tmp-")):
            shutil.rmtree(old, ignore_errors=True)
    trim_scratch(settings, keep=dest)
    return dest


def local_file(settings: Settings, location: str) -> Path:
    """A local copy of a stored upload (uploads never change: cached by name)."""
    if not is_remote(location):
        return Path(location)
    store = open_store(settings)
    key = store.key(location)
    dest = scratch_copy(settings, key)
    if dest.is_file():
        _touch(dest)
        return dest
    store.get_file(key, dest)
    trim_scratch(settings, keep=dest)
    return dest


# -- the scratch cache's bound -----------------------------------------------------------------


def _touch(copy: Path) -> None:
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
                f.stat().st_size for f in storage.regular_files(path))
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
        storage.remove(path)
        if path.parent.parent.name == "models":
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the model's folder, when that was its last copy
        total -= size


# -- tar.gz out of the store -------------------------------------------------------------------


@dataclass(frozen=True)
class TarEntry:
    name: str
    size: int
    chunks: Callable[[], Iterator[bytes]]


def iter_tar_gz_entries(entries: Iterable[TarEntry], *, chunk_size: int = storage.CHUNK
                        ) -> Iterator[bytes]:
    """Stream entries as a .tar.gz (as `storage.iter_tar_gz` does a local directory): each
    member's bytes are read, compressed and handed out a chunk at a time."""
    sink = storage._Sink()
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


def iter_stored_model_tar_gz(settings: Settings, location: str, files: dict[str, int],
                             include: Callable[[str], bool] = lambda name: True,
                             prefix: str = "") -> Iterator[bytes]:
    """A published model (its manifest's `files`) as a .tar.gz streamed from the store, one
    chunk in memory at a time; `include` picks members by name; with `prefix` (a sub-folder,
    "onnx/") only the files under it, named as from inside it."""
    store = open_store(settings)
    key = store.key(location)
    entries = [TarEntry(name.removeprefix(prefix), size,
                        lambda name=name: store.iter_bytes(f"{key}/{name}"))  # type: ignore[misc]
               for name, size in sorted(files.items())
               if name.startswith(prefix) and include(name)]
    return iter_tar_gz_entries(entries)
