"""Where a job's checkpoints live and what their metadata says, without torch.

The layout under a job's `work_dir` (written by `checkpoint.py`):

    checkpoints/step-<n>/checkpoint.json   this file's subject: id, step, epoch, created_at, ...
    checkpoints/step-<n>/...               weights, optimizer, scheduler, RNG, loop state
    teacher/finetuned.json                 the teacher fine-tuned by an earlier attempt is complete

Only directories holding a readable `checkpoint.json` count: it is written last, inside a
temporary directory that is renamed into place, so a half-written checkpoint is never listed.
The API lists checkpoints through this module, so it needs neither torch nor the checkpoint's
weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
METADATA = "checkpoint.json"
FINETUNED_MARKER = "finetuned.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_id(step: int) -> str:
    """The id the API shows for the checkpoint of `step`."""
    return f"ckpt-{step}"


def checkpoints_dir(work_dir: Path) -> Path:
    return work_dir / CHECKPOINTS


def step_dir(work_dir: Path, step: int) -> Path:
    return checkpoints_dir(work_dir) / f"step-{step}"


def read_metadata(directory: Path) -> dict[str, Any] | None:
    """A checkpoint directory's metadata, or None when it is incomplete or unreadable."""
    try:
        data = json.loads((directory / METADATA).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("step"), int) else None


def list_checkpoints(work_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The complete checkpoints under `work_dir`, newest (highest step) first."""
    root = checkpoints_dir(work_dir)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path, dict[str, Any]]] = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        meta = read_metadata(path) if match and path.is_dir() else None
        if match and meta is not None:
            found.append((int(match.group(1)), path, meta))
    return [(path, meta) for _, path, meta in sorted(found, key=lambda item: -item[0])]
