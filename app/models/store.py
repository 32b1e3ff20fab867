"""A model's directory in storage: published whole or not at all, pulled into the scratch
cache, streamed out as a .tar.gz. With local storage each function is what the code always did (a
rename, the path itself); with an object store it uploads or downloads (`app.storage`).

A model directory is published by its `.manifest.json` (its files and sizes; also its content
stamp), written after its files: a reader goes by the manifest alone, so a model whose upload was
cut short is never read, and its row is written only after its manifest, so it is never served
either.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from app.settings import Settings
from app.storage import local
from app.storage.object_store import is_remote, open_store, scratch_copy
from app.storage.scratch import touch, trim_scratch
from app.storage.tar_gz import TarEntry, iter_tar_gz_entries
from app.storage.trees import download_tree, upload_tree

MANIFEST = ".manifest.json"
# Files predict-time and validation-time readers of a model never need: its weights, its exports.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".data")
_MANIFEST_TTL_S = 5.0
_manifests: dict[str, tuple[float, bytes | None]] = {}
_manifests_lock = threading.Lock()


def publish_model_dir(settings: Settings, src: Path, model_id: str) -> str:
    """Put a checked model directory in the store as model `model_id`; its location for the row.

    Local: renamed into `models/` (the source is gone). Remote: uploaded, then its manifest (the
    source stays; the caller removes it). Either way, nothing is left behind on failure."""
    if not settings.remote_storage:
        final = local.model_dir(settings, model_id)
        local.move_dir(src, final)
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
        local.move_dir(Path(location), back_to)


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
        local.remove(home)  # deleted (by another process): its copies are never read again
        raise FileNotFoundError(f"{location} has no {MANIFEST}: its upload never finished")
    stamp = hashlib.sha256(data).hexdigest()[:16]
    dest = home / (stamp if weights else f"{stamp}-light")
    if dest.is_dir():
        touch(dest)
        return dest
    names = [name for name in json.loads(data)["files"]
             if weights or not name.endswith(WEIGHT_SUFFIXES)]
    download_tree(store, key, dest, names)
    for old in home.iterdir():  # earlier contents of this model: never read again
        if not old.name.startswith((stamp, ".tmp-")):
            shutil.rmtree(old, ignore_errors=True)
    trim_scratch(settings, keep=dest)
    return dest


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
