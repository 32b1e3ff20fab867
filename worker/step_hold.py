"""A test hook: hold a running job at an optimizer step until the test releases it.

The fault tests need a job still running when their fault hits (a SIGTERM, a frozen process, the
database, the broker or the API going away). Rather than jobs made long enough to outlive the
fault on a loaded machine, such a test starts its worker with

    DISTILL_TEST_HOOKS=1  DISTILL_TEST_HOLD_AT_STEP=<n>  DISTILL_TEST_HOLD_RELEASE=<path>

and the worker's reporter (`DbReporter.metrics`) holds the job in its distill stage once the
training metrics of step n (or the first logged step past it) are reported: it writes them and
the job's progress at that step, then waits until the file `path` exists, or until the run is
asked to stop or pause (a cancel, a lost lease, a shutdown), whichever comes first. The
heartbeat goes on meanwhile, as during a long step, so the lease stays fresh. Each run (attempt)
holds at most once; a worker whose environment names no hold never holds.

Read once, when the module is imported. Without `DISTILL_TEST_HOOKS=1` the other two variables
are ignored. Deliberately not a `Settings` field: no deployment has a reason to set it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

HOOKS_ENV = "DISTILL_TEST_HOOKS"
STEP_ENV = "DISTILL_TEST_HOLD_AT_STEP"
RELEASE_ENV = "DISTILL_TEST_HOLD_RELEASE"


@dataclass(frozen=True)
class StepHold:
    """Hold at optimizer step `step` (or the first logged step past it) until `release` exists."""

    step: int
    release: Path
    poll_s: float = 0.05

    def due(self, step: int) -> bool:
        return step >= self.step and not self.release.exists()

    def wait(self, interrupted: Callable[[], bool]) -> None:
        """Return once the release file exists or `interrupted()` is true."""
        while not self.release.exists() and not interrupted():
            time.sleep(self.poll_s)


def from_env(environ: Mapping[str, str]) -> StepHold | None:
    """The hold `environ` asks for; None unless the test hooks are on and both values are set."""
    step, release = environ.get(STEP_ENV), environ.get(RELEASE_ENV)
    if environ.get(HOOKS_ENV) != "1" or not step or not release:
        return None
    return StepHold(step=int(step), release=Path(release))


HOLD = from_env(os.environ)
