"""The object store behind `DISTILL_STORAGE_URL=s3://bucket/prefix` (any fsspec protocol), for
an API and workers that share no folder.

A stored thing has a *location*: the string a database row keeps in its `path` column. With
local storage it is an absolute path (as it always was); with an object store it is the URL of its
key (`s3://bucket/prefix/models/model-…`). `is_remote(location)` tells them apart, so rows
written before a switch keep working.

Single objects are written whole or not at all (an S3 PUT, or a multipart upload, appears at
once when it completes). What spans several objects (a model directory, a checkpoint) is
published by something written after it: a database row, a marker object (see
`app.storage.trees`). Only this module knows fsspec.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from app.settings import Settings
from app.storage import local

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


def is_remote(location: str) -> bool:
    """Whether a stored location is an object-store URL rather than a local path."""
    return "://" in location and not location.startswith("file://")


class ObjectStore:
    """Keys (`files/…`, `models/<id>/…`, `jobs/<id>/…`) under the root of a store URL."""

    def __init__(self, url: str, *, endpoint_url: str | None = None) -> None:
        protocol, root = fsspec.core.split_protocol(url)
        if not protocol or not root or not root.strip("/"):
            raise ValueError(f"storage URL {url!r}: expected protocol://bucket[/prefix]")
        options: dict[str, Any] = {"use_listings_cache": False}
        if protocol in ("s3", "s3a") and endpoint_url:
            options["endpoint_url"] = endpoint_url
        self.fs = fsspec.filesystem(protocol, **options)
        self.protocol = protocol
        self.root = root.strip("/")
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        """Create the bucket on first use (MinIO and moto start empty); a store whose bucket
        exists, or whose credentials may not create one, is left as it is."""
        bucket = self.root.split("/", 1)[0]
        try:
            if not self.fs.exists(bucket):
                self.fs.mkdir(bucket)
        except (OSError, PermissionError) as exc:  # the next real request says what is wrong
            log.warning("could not check or create bucket %s: %s", bucket, exc)

    # -- names ---------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return f"{self.root}/{key.strip('/')}"

    def url(self, key: str) -> str:
        """The location a row keeps for `key`."""
        return f"{self.protocol}://{self.path(key)}"

    def key(self, location: str) -> str:
        """The key of a location written by `url` (ValueError for one outside this store)."""
        prefix = f"{self.protocol}://{self.root}/"
        if not location.startswith(prefix):
            raise ValueError(f"{location} is not in the store {self.protocol}://{self.root}")
        return location[len(prefix):]

    # -- single objects --------------------------------------------------------------------------
    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Copy `stream` to `key` a chunk at a time (a multipart upload for a large one)."""
        with self.fs.open(self.path(key), "wb", block_size=8 * CHUNK) as out:
            shutil.copyfileobj(stream, out, CHUNK)

    def put_file(self, key: str, local: Path) -> None:
        self.fs.put_file(str(local), self.path(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(key), data)

    def read_bytes(self, key: str) -> bytes | None:
        """A small object's bytes, or None when it does not exist."""
        try:
            data: bytes = self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            return None
        return data

    def get_file(self, key: str, local: Path) -> None:
        """Download `key` to `local` through a temporary sibling and a rename."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f".tmp-{local.name}-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.get_file(self.path(key), str(tmp))
            os.replace(tmp, local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def iter_bytes(self, key: str, *, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """An object's bytes in chunks (read ahead one block at a time: memory stays bounded)."""
        with self.fs.open(self.path(key), "rb", block_size=chunk_size) as handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    # -- prefixes --------------------------------------------------------------------------------
    def list(self, prefix: str) -> dict[str, int]:
        """The objects under `prefix/`: {key relative to the prefix: size}."""
        base = self.path(prefix).rstrip("/") + "/"
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {name[len(base):]: int(info.get("size") or 0) for name, info in found.items()
                if name.startswith(base) and info.get("type", "file") == "file"}

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def remove_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix/`; a missing prefix is fine."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(prefix).rstrip("/") + "/", recursive=True)


@functools.lru_cache(maxsize=8)
def _open(url: str, endpoint_url: str | None, _pid: int) -> ObjectStore:
    return ObjectStore(url, endpoint_url=endpoint_url)


def open_store(settings: Settings) -> ObjectStore:
    """The settings' object store (one per process: a forked worker child opens its own)."""
    if not settings.remote_storage or settings.storage_url is None:
        raise ValueError("DISTILL_STORAGE_URL names no object store")
    return _open(settings.storage_url, settings.s3_endpoint_url, os.getpid())


def scratch_copy(settings: Settings, key: str) -> Path:
    """Where this process keeps its local copy of a stored upload (`files/<name>`) or the copies
    of a stored model (`models/<id>/`, one folder per version) in its scratch cache."""
    kind, _, name = key.strip("/").partition("/")
    if kind == "files":
        return settings.files_dir / Path(name).name
    return settings.resolved_scratch_dir / kind / Path(name).name


def remove_location(settings: Settings, location: str) -> None:
    """Delete a stored file or directory wherever it is, this process's scratch copy of it too;
    a missing one is fine."""
    if is_remote(location):
        store = open_store(settings)
        key = store.key(location)
        store.remove(key)
        store.remove_prefix(key)
        local.remove(scratch_copy(settings, key))
    else:
        local.remove(Path(location))
