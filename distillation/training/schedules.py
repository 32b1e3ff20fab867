"""Values that change over training: the temperature and the loss weights.

A schedule is constant (no end value) or linear from its start value to its end value over the
optimizer steps: the first step uses the start value, the last step the end value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """`start` throughout, or linear from `start` to `end` as training progresses from 0 to 1."""

    start: float
    end: float | None = None

    @property
    def constant(self) -> bool:
        return self.end is None or self.end == self.start

    def at(self, progress: float) -> float:
        """The value at `progress` (fraction of training done, clamped to [0, 1])."""
        if self.end is None:
            return self.start
        fraction = min(1.0, max(0.0, progress))
        return self.start + (self.end - self.start) * fraction


def step_progress(step: int, total_steps: int) -> float:
    """Progress of optimizer step `step` (0-based) of `total_steps`: 0 for the first, 1 for the last."""
    if total_steps <= 1:
        return 0.0
    return min(1.0, step / (total_steps - 1))
