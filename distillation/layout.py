"""The layout of a job's work folder, the one place that names its files; without torch, so
the API and the worker read it without loading the training stack.

Under a job's `work_dir`:

    checkpoints/step-<n>/checkpoint.json   a checkpoint's metadata: id, step, epoch, created_at, ...
    checkpoints/step-<n>/...               weights, optimizer, scheduler, RNG, loop state
                                           (`training.checkpoint` writes them)
    teacher/                               the teacher fine-tuned by this job (`engine`)
    teacher/finetuned.json                 ... complete: an earlier attempt finished it
    teacher_answers.jsonl                  the answers the teacher wrote to the job's prompts,
                                           appended batch by batch (`methods.answer_store`)
    teacher_cache.pt                       the teacher's outputs on the training set
                                           (`training.teacher_cache`)
    teacher_hidden.safetensors             ... and its hidden states at the layers the losses
                                           read, when it keeps them (`training.hidden_cache`)
    best/student-epoch-<n>.safetensors     the best epoch's student so far, and
    best/best.json                         which epoch it is (`export.selection`)
    .*-ddp-payload.pt                      what the other DDP ranks load (`training.parallel`)
    generated_prompts.json                 the prompts the teacher wrote so far, and what from
                                           (`training.prompt_writer`)
    time_budget.json                       the epochs planned for the job's time budget, which
                                           a resumed attempt reuses (`training.budget`)
    generated.jsonl                        the generated set the worker registers as a file of
                                           purpose `generated` (`JobConfig.generated_file`)

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
TEACHER_DIR = "teacher"
FINETUNED_MARKER = "finetuned.json"
TEACHER_CACHE = "teacher_cache.pt"
TEACHER_HIDDEN = "teacher_hidden.safetensors"
TEACHER_ANSWERS = "teacher_answers.jsonl"
BEST_DIR = "best"
BEST_STATE = "best.json"
DDP_PAYLOAD = "ddp-payload.pt"
GENERATED_PROMPTS = "generated_prompts.json"
GENERATED_SET = "generated.jsonl"
TIME_BUDGET_PLAN = "time_budget.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_id(step: int) -> str:
    """The id the API shows for the checkpoint of `step`."""
    return f"ckpt-{step}"


def teacher_dir(work_dir: Path) -> Path:
    """Where the job keeps the teacher it fine-tuned."""
    return work_dir / TEACHER_DIR


def teacher_cache_path(work_dir: Path) -> Path:
    return work_dir / TEACHER_CACHE


def teacher_hidden_path(work_dir: Path) -> Path:
    return work_dir / TEACHER_HIDDEN


def generated_prompts_path(work_dir: Path) -> Path:
    return work_dir / GENERATED_PROMPTS


def generated_set_path(work_dir: Path) -> Path:
    return work_dir / GENERATED_SET


def time_budget_path(work_dir: Path) -> Path:
    return work_dir / TIME_BUDGET_PLAN


def teacher_answers_path(work_dir: Path) -> Path:
    return work_dir / TEACHER_ANSWERS


def best_dir(work_dir: Path) -> Path:
    return work_dir / BEST_DIR


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
