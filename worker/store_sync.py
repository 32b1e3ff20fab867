"""A job's state between the worker's scratch folder and a remote store (`s3://…`).

The training core works in local folders as always. Around it, with a remote store:

- `pull` (before an attempt starts): what earlier attempts published (their newest complete
  checkpoints, the fine-tuned teacher, the best epoch, the teacher cache, the written prompts)
  is downloaded into their folders in this worker's scratch cache; `attempts.prepare` then
  carries it forward as it does on one machine.
- `Pusher` (while it runs): a thread publishes this attempt's new complete state every
  `store_sync_interval_s`, and once more when the run stops early (a shutdown's checkpoint).

A unit that spans several files (a checkpoint, the teacher, the best epoch) is published by its
marker (`checkpoint.json`, `finetuned.json`, `best.json`), uploaded after its other files and
read first by `pull`: a worker that dies mid-upload leaves objects that no attempt trusts. A
single file (the teacher cache, the written prompts) appears whole or not at all. What this
attempt got from its predecessors is not published again: the store has it under theirs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.jobs import workspace
from app.settings import Settings
from app.storage.object_store import open_store
from app.storage.trees import download_tree, upload_tree
from distillation.layout import (
    BEST_DIR,
    BEST_STATE,
    CHECKPOINTS,
    FINETUNED_MARKER,
    GENERATED_PROMPTS,
    METADATA,
    TEACHER_CACHE,
    TEACHER_DIR,
    TEACHER_HIDDEN,
    TIME_BUDGET_PLAN,
    list_checkpoints,
)
from worker.attempts import KEEP_CHECKPOINTS

log = logging.getLogger(__name__)

# The directories an attempt keeps whole, each with the marker that completes it.
DIR_MARKERS = {TEACHER_DIR: FINETUNED_MARKER, BEST_DIR: BEST_STATE}
FILES = (TEACHER_CACHE, TEACHER_HIDDEN, GENERATED_PROMPTS, TIME_BUDGET_PLAN)
_CHECKPOINT = re.compile(rf"^({CHECKPOINTS}/step-(\d+))/")


@dataclass(frozen=True)
class Unit:
    name: str  # relative to the work folder
    marker: str | None  # a directory's commit file; None for a single file


def local_units(work: Path) -> dict[Unit, tuple[int, int]]:
    """The complete units in a local work folder, each with its marker's (mtime, size)."""
    found: list[tuple[Unit, Path]] = [
        (Unit(directory.relative_to(work).as_posix(), METADATA), directory / METADATA)
        for directory, _ in list_checkpoints(work)]
    found += [(Unit(name, marker), work / name / marker) for name, marker in DIR_MARKERS.items()]
    found += [(Unit(name, None), work / name) for name in FILES]
    units = {}
    for unit, marker in found:
        try:
            stat = marker.stat()
        except OSError:
            continue
        units[unit] = (stat.st_mtime_ns, stat.st_size)
    return units


# -- before the attempt --------------------------------------------------------------------------


def pull(settings: Settings, job_id: str, *, before: int) -> list[str]:
    """Download the complete state earlier attempts published into their local folders (what
    is already there is kept); the names pulled, for the log."""
    stored = {attempt: names for attempt, names in workspace.stored_work(settings, job_id).items()
              if attempt < before}
    wanted: list[tuple[int, str, list[str]]] = []  # (attempt, unit, its files)
    steps: dict[int, tuple[int, str]] = {}
    for attempt in sorted(stored, reverse=True):  # newest attempt first: its copy of a step wins
        names = stored[attempt]
        for name in names:
            match = _CHECKPOINT.match(name)
            if match and f"{match.group(1)}/{METADATA}" in names:
                steps.setdefault(int(match.group(2)), (attempt, match.group(1)))
    for step in sorted(steps, reverse=True)[:KEEP_CHECKPOINTS]:
        attempt, unit = steps[step]
        wanted.append((attempt, unit, _members(stored[attempt], unit)))
    for unit, marker in DIR_MARKERS.items():
        owner = next((a for a in sorted(stored, reverse=True)
                      if f"{unit}/{marker}" in stored[a]), None)
        if owner is not None:
            wanted.append((owner, unit, _members(stored[owner], unit)))
    for name in FILES:
        owner = next((a for a in sorted(stored, reverse=True) if name in stored[a]), None)
        if owner is not None:
            wanted.append((owner, name, []))
    store = open_store(settings)
    pulled = []
    for attempt, unit, members in wanted:
        work = workspace.work_dir(settings, job_id, attempt)
        key = f"{workspace.store_key(settings, work)}/{unit}"
        if (work / unit).exists():
            continue
        if members:
            download_tree(store, key, work / unit, members)
        else:
            store.get_file(key, work / unit)
        pulled.append(f"attempt-{attempt}/{unit}")
    return pulled


def _members(names: dict[str, int], unit: str) -> list[str]:
    return [name[len(unit) + 1:] for name in names if name.startswith(f"{unit}/")]


# -- while it runs -------------------------------------------------------------------------------


class Pusher:
    """Publishes an attempt's new complete units from its work folder to the store."""

    def __init__(self, settings: Settings, work: Path) -> None:
        self.store = open_store(settings)
        self.work = work
        self.key = workspace.store_key(settings, work)
        # What is here already came from earlier attempts (`pull`, `attempts.prepare`).
        self.published: dict[Unit, tuple[int, int]] = local_units(work)
        self._lock = threading.Lock()

    def push(self) -> None:
        """Publish what is new or changed; unpublish this attempt's checkpoints pruned locally.
        A failure is logged and tried again next time: training does not stop for the store."""
        with self._lock:
            units = local_units(self.work)
            for unit, stamp in units.items():
                if self.published.get(unit) != stamp:
                    try:
                        self._publish(unit, stamp)
                    except OSError as exc:  # pruned under us, or the store is away
                        log.warning("could not publish %s of %s: %s", unit.name, self.key, exc)
            for unit in [u for u in self.published if u not in units]:
                if unit.name.startswith(f"{CHECKPOINTS}/"):
                    self.store.remove_prefix(f"{self.key}/{unit.name}")
                del self.published[unit]

    def _publish(self, unit: Unit, stamp: tuple[int, int]) -> None:
        key = f"{self.key}/{unit.name}"
        if unit.marker is None:
            self.store.put_file(key, self.work / unit.name)
        else:
            if unit in self.published:  # a new version of it: unpublished while it uploads
                self.store.remove(f"{key}/{unit.marker}")
            upload_tree(self.store, self.work / unit.name, key, last=unit.marker)
            if local_units(self.work).get(unit) != stamp:
                # Rewritten while it uploaded: its files may be of two versions. Next time.
                self.store.remove(f"{key}/{unit.marker}")
                return
        self.published[unit] = stamp


@contextmanager
def pushing(settings: Settings, work: Path) -> Iterator[None]:
    """Publish the attempt's state while the block runs (remote store only); when it ends with
    an exception (a pause, a cancel, an error), publish what is left first."""
    if not settings.remote_storage:
        yield
        return
    pusher = Pusher(settings, work)
    stop = threading.Event()

    def push() -> None:
        try:
            pusher.push()
        except Exception:  # the store's own errors are not all OSErrors; the run goes on
            log.exception("publishing %s to the store failed", pusher.key)

    def loop() -> None:
        while not stop.wait(settings.store_sync_interval_s):
            push()

    thread = threading.Thread(target=loop, name="store-sync", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        stop.set()
        thread.join()
        push()
        raise
    stop.set()
    thread.join()
