"""An attempt's folder, started from what the attempts before it saved.

Each attempt works in a folder of its own (`app.jobs.workspace`). When one starts, the newest
complete checkpoints, the teacher's cached outputs, the prompts the teacher wrote, the plan of
the job's time budget and the teacher fine-tuned by the attempts before it are linked into its
folder (hard links: no copy of
the bytes, and nothing an earlier attempt does to its own folder afterwards, such as a worker
that has not yet noticed it lost the job deleting its checkpoints, reaches the new folder). The
core replaces these files by writing new ones and renaming them into place, never by writing
into them, so a link is never changed under the other folder either. Only complete things are
carried: a checkpoint with its metadata, a teacher with its `finetuned.json`, a cache file, the
written prompts or the budget's plan (each written whole, then renamed), the best epoch's student with its
`best.json`. Anything else in a work folder is rebuilt by every attempt (the pruned tokenizer,
the generated set); `tests/worker/test_attempts.py` fails when the core starts
keeping something this module does not know.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from app.jobs import workspace
from app.jobs.lifecycle import Lease
from app.settings import Settings
from distillation.layout import (
    BEST_DIR,
    BEST_STATE,
    FINETUNED_MARKER,
    GENERATED_PROMPTS,
    TEACHER_CACHE,
    TEACHER_DIR,
    TEACHER_HIDDEN,
    TIME_BUDGET_PLAN,
    checkpoints_dir,
    list_checkpoints,
)

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2  # as many as the `Checkpointer` keeps: the newest, and one if it is unreadable
# Single files, each replaced whole by a rename: the newest attempt's copy is carried.
CARRIED_FILES = (TEACHER_CACHE, TEACHER_HIDDEN, GENERATED_PROMPTS, TIME_BUDGET_PLAN)


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> bool:
    """Link `src`'s files into a new `dst`, whole or not at all; False if that failed (an
    earlier attempt still running may delete what it is copied from)."""
    tmp = dst.parent / f".tmp-carry-{dst.name}-{uuid.uuid4().hex[:8]}"
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, tmp, copy_function=_link, ignore=shutil.ignore_patterns(".tmp-*"))
        tmp.rename(dst)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not carry %s forward: %s", src, exc)
        return False
    return True


def _carry_checkpoints(earlier: list[Path], work: Path) -> list[int]:
    newest: dict[int, Path] = {}
    for folder in earlier:  # newest attempt first: its copy of a step wins
        for directory, meta in list_checkpoints(folder):
            newest.setdefault(int(meta["step"]), directory)
    carried = []
    for step in sorted(newest, reverse=True)[:KEEP_CHECKPOINTS]:
        source = newest[step]
        if _link_tree(source, checkpoints_dir(work) / source.name):
            carried.append(step)
    return carried


def prepare(settings: Settings, lease: Lease) -> Path:
    """This attempt's work folder, with what the attempts before it saved linked in."""
    work = workspace.work_dir(settings, lease.job_id, lease.attempt)
    work.mkdir(parents=True, exist_ok=True)
    earlier = workspace.earlier_work_dirs(settings, lease.job_id, before=lease.attempt)
    if not earlier:
        return work
    carried = _carry_checkpoints(earlier, work)
    teacher = next((f / TEACHER_DIR for f in earlier if (f / TEACHER_DIR / FINETUNED_MARKER).is_file()),
                   None)
    if teacher is not None:
        _link_tree(teacher, work / TEACHER_DIR)
    best = next((f / BEST_DIR for f in earlier if (f / BEST_DIR / BEST_STATE).is_file()), None)
    if best is not None:
        _link_tree(best, work / BEST_DIR)
    files = {name: next((f / name for f in earlier if (f / name).is_file()), None)
             for name in CARRIED_FILES}
    for name, source in files.items():
        if source is None:
            continue
        tmp = work / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        try:
            _link(str(source), str(tmp))
            tmp.rename(work / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not carry %s forward: %s", source, exc)
    log.info("job %s attempt %d: carried forward checkpoints %s, fine-tuned teacher %s, best "
             "epoch %s, files %s", lease.job_id, lease.attempt, carried, teacher is not None,
             best is not None, [name for name, source in files.items() if source is not None])
    return work
