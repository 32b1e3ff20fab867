"""Where a job's attempts keep their files: `jobs_dir/<job id>/attempt-<n>/{work,output}`.

Each attempt writes only inside its own folder, so a worker that lost its job (and may not know
it yet) can never touch the files of the attempt that took the job over: its checkpoints, teacher
cache, fine-tuned teacher or export. The next attempt starts from what the earlier ones saved
(`worker/attempts.py` links it forward); the whole job folder goes only when the job finishes
for good, by the attempt that recorded the outcome.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from app.settings import Settings
from distillation.checkpoint_index import list_checkpoints

_ATTEMPT = re.compile(r"^attempt-(\d+)$")
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


def remove(settings: Settings, job_id: str) -> None:
    """Delete every attempt's files: only for the attempt that finished the job for good."""
    shutil.rmtree(job_root(settings, job_id), ignore_errors=True)
