"""The fault tests' hold (`worker/step_hold.py`): honoured only with the test hooks turned on, and
released by its file or by the run being asked to stop. Its use by a real worker is the fault
suite's (`tests/worker/test_faults.py`)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from worker.step_hold import HOOKS_ENV, RELEASE_ENV, STEP_ENV, StepHold, from_env


def test_a_hold_is_read_only_with_the_test_hooks_on(tmp_path: Path) -> None:
    asked = {STEP_ENV: "7", RELEASE_ENV: str(tmp_path / "go")}
    assert from_env(asked) is None
    assert from_env({**asked, HOOKS_ENV: "0"}) is None
    assert from_env({HOOKS_ENV: "1", STEP_ENV: "7"}) is None
    assert from_env({**asked, HOOKS_ENV: "1"}) == StepHold(step=7, release=tmp_path / "go")


def test_a_hold_waits_for_its_file_or_a_stop(tmp_path: Path) -> None:
    hold = StepHold(step=7, release=tmp_path / "go", poll_s=0.01)
    assert not hold.due(6) and hold.due(7) and hold.due(9)
    # released by its file, touched while it waits
    threading.Timer(0.2, hold.release.touch).start()
    started = time.monotonic()
    hold.wait(lambda: False)
    assert hold.release.exists() and time.monotonic() - started >= 0.15
    assert not hold.due(7)  # released: never holds again
    # or by the run being asked to stop
    stopped = threading.Event()
    other = StepHold(step=1, release=tmp_path / "never", poll_s=0.01)
    threading.Timer(0.1, stopped.set).start()
    other.wait(stopped.is_set)
    assert stopped.is_set() and not other.release.exists()
