"""A reporter for the core's tests: it keeps everything the core reports, and can ask the core to
stop after some checks, or "die" (raise `WorkerDied`) when a training step's metrics arrive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distillation.config import Progress


class WorkerDied(RuntimeError):
    """Stands for the worker process dying mid-run (nothing after it runs)."""


@dataclass
class RecordingReporter:
    """Keeps every progress, metrics and message event.

    `stop_after`: `should_stop()` answers True from its (stop_after + 1)-th call on.
    `die_at_step`: raises `WorkerDied` when the train-loss metrics of that step arrive.
    """

    stop_after: int | None = None
    die_at_step: int | None = None
    progress_events: list[Progress] = field(default_factory=list)
    metric_events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)  # messages
    warnings: list[str] = field(default_factory=list)  # the messages of level "warning"
    checks: int = 0

    # -- the Reporter protocol -------------------------------------------------------------------
    def progress(self, progress: Progress) -> None:
        self.progress_events.append(progress)

    def metrics(self, step: int, data: dict[str, Any]) -> None:
        if "train_loss" in data and step == self.die_at_step:
            raise WorkerDied(f"killed at step {step}")
        self.metric_events.append((step, data))

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self.events.append((text, data))
        if level == "warning":
            self.warnings.append(text)

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_after is not None and self.checks > self.stop_after

    def should_pause(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    # -- what the tests read ---------------------------------------------------------------------
    @property
    def messages(self) -> list[str]:
        return [text for text, _ in self.events]

    def stages(self) -> list[str]:
        """The stages in the order they reported progress (each once per run of it)."""
        seen: list[str] = []
        for event in self.progress_events:
            if not seen or seen[-1] != event.stage:
                seen.append(event.stage)
        return seen

    def train_metrics(self) -> list[dict[str, Any]]:
        return [data for _, data in self.metric_events if "train_loss" in data]

    def losses(self, key: str = "train_loss") -> list[float]:
        return [data[key] for _, data in self.metric_events if key in data]

    @property
    def steps(self) -> list[int]:
        """The steps of the train-loss metrics events that arrived."""
        return [step for step, data in self.metric_events if "train_loss" in data]

    def resumed_from(self) -> list[int]:
        return [d["resumed_from_step"] for _, d in self.events if d and "resumed_from_step" in d]
