"""Where a job's attempts keep their files: `jobs_dir/<job id>/attempt-<n>/{work,output}`.

Each attempt writes only inside its own folder, so a worker that lost its job (and may not know
it yet) can never touch the files of the attempt that took the job over: its checkpoints, teacher
cache, fine-tuned teacher or export. The next attempt starts from what the earlier ones saved
(`worker/attempts.py` links it forward); the whole job folder goes only when the job finishes
for good, by the attempt that recorded the outcome.

With a remote store (`DISTILL_STORAGE_URL=s3://…`) these folders are in the worker's scratch
cache, and the store keeps, under `jobs/<job id>/attempt-<n>/work/`, what each attempt published
of its own (`worker/store_sync.py`): the next attempt, on any machine, starts from there.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.storage.object_store import open_store
from distillation.layout import CHECKPOINTS, METADATA, list_checkpoints

_ATTEMPT = re.compile(r"^attempt-(\d+)$")
_STORED = re.compile(r"^attempt-(\d+)/work/(.+)$")
# Where every attempt worked before attempts had folders of their own: read as attempt 0.
LEGACY_WORK = "work"


def job_root(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def attempt_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    return job_root(settings, job_id) / f"attempt-{attempt}"


def work_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    """The attempt's scratch: checkpoints, teacher cache, fine-tuned teacher."""
    return attempt_dir(settings, job_id, attempt) / "work"


def output_dir(settings: Settings, job_id: str, attempt: int) -> Path:
    """The attempt's export, moved into the model registry by the attempt that owns the job."""
    return attempt_dir(settings, job_id, attempt) / "output"


def earlier_work_dirs(settings: Settings, job_id: str, before: int) -> list[Path]:
    """The work folders of the attempts before `before`, newest first (the legacy one last)."""
    root = job_root(settings, job_id)
    found: list[tuple[int, Path]] = []
    if root.is_dir():
        for path in root.iterdir():
            match = _ATTEMPT.match(path.name)
            if match and int(match.group(1)) < before:
                found.append((int(match.group(1)), path / "work"))
    dirs = [path for _, path in sorted(found, reverse=True)]
    legacy = root / LEGACY_WORK
    return [*dirs, legacy] if legacy.is_dir() else dirs


def checkpoint_work_dir(settings: Settings, job_id: str) -> Path | None:
    """The work folder whose checkpoints are the job's newest (the current attempt's, once it
    has linked its predecessors' forward); None when no attempt saved one."""
    best: tuple[int, Path] | None = None
    for work in earlier_work_dirs(settings, job_id, before=2**31):
        found = list_checkpoints(work)
        if found and (best is None or found[0][1]["step"] > best[0]):
            best = (found[0][1]["step"], work)
    return best[1] if best is not None else None


def store_key(settings: Settings, work: Path) -> str:
    """The store's key of a local work folder (`jobs/<job id>/attempt-<n>/work`)."""
    return f"jobs/{work.relative_to(settings.jobs_dir).as_posix()}"


def stored_work(settings: Settings, job_id: str) -> dict[int, dict[str, int]]:
    """What each attempt published in the remote store: {attempt: {name in its work folder:
    size}} (one listing)."""
    found: dict[int, dict[str, int]] = {}
    for name, size in open_store(settings).list(f"jobs/{job_id}").items():
        match = _STORED.match(name)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = size
    return found


def stored_checkpoints(settings: Settings, job_id: str) -> list[dict[str, Any]]:
    """The metadata of the job's published checkpoints in the remote store, newest first (a
    step kept by several attempts once)."""
    store = open_store(settings)
    marker = re.compile(rf"^{CHECKPOINTS}/step-(\d+)/{re.escape(METADATA)}$")
    newest: dict[int, int] = {}
    for attempt, names in sorted(stored_work(settings, job_id).items()):
        for name in names:
            if match := marker.match(name):
                newest[int(match.group(1))] = attempt
    found = []
    for step, attempt in sorted(newest.items(), reverse=True):
        data = store.read_bytes(f"jobs/{job_id}/attempt-{attempt}/work/{CHECKPOINTS}/"
                                f"step-{step}/{METADATA}")
        try:
            meta = json.loads(data) if data is not None else None
        except ValueError:
            meta = None
        if isinstance(meta, dict) and isinstance(meta.get("step"), int):
            found.append(meta)
    return found


def remove(settings: Settings, job_id: str) -> None:
    """Delete every attempt's files (and with a remote store what they published): only for the
    attempt that finished the job for good."""
    shutil.rmtree(job_root(settings, job_id), ignore_errors=True)
    if settings.remote_storage:
        open_store(settings).remove_prefix(f"jobs/{job_id}")
