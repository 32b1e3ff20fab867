"""What the batchers report about each forward pass they serve: the one place a metrics exporter
hooks into (batch sizes, per-batch latency), with a small in-memory log as the default hook."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

RECENT_BATCHES = 1024


@dataclass(frozen=True)
class BatchStats:
    """One forward pass as served."""

    model_id: str
    runtime: str
    requests: int  # callers served together
    rows: int  # inputs in the forward pass
    seconds: float  # the forward pass, tokenisation included
    ok: bool  # False when the batch raised (its calls were then re-run one by one)


BatchHook = Callable[[BatchStats], None]


class BatchLog:
    """The default hook: totals and the most recent batches (bounded), thread-safe. A metrics
    exporter can read it, or be called alongside it (`hooks`)."""

    def __init__(self, keep: int = RECENT_BATCHES, hooks: list[BatchHook] | None = None) -> None:
        self._lock = threading.Lock()
        self._recent: deque[BatchStats] = deque(maxlen=keep)
        self.hooks: list[BatchHook] = list(hooks or [])
        self.batches = self.requests = self.rows = 0

    def __call__(self, stats: BatchStats) -> None:
        with self._lock:
            self._recent.append(stats)
            self.batches += 1
            self.requests += stats.requests
            self.rows += stats.rows
        for hook in self.hooks:
            hook(stats)

    def recent(self) -> list[BatchStats]:
        """The latest batches, oldest first."""
        with self._lock:
            return list(self._recent)
