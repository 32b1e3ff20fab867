"""Requests per key per minute: a token bucket per key, held in this process.

A bucket holds up to a minute's allowance and refills at `per_minute / 60` tokens a second, so a
key may burst to its allowance and then keeps to its rate. In-process on purpose: the API runs
as one process (`distill api`, `distill serve`), where a dictionary and a lock do the job with
nothing to deploy; several API processes would each count on their own (a shared counter, e.g.
the `limits` library on Redis, would then be the next step).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

# Past this many keys, buckets that have refilled (idle keys) are dropped, bounding the memory.
_PRUNE_AT = 10_000


class RateLimiter:
    """Thread-safe token buckets, one per key; `clock` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def acquire(self, key: str, *, per_minute: int) -> int:
        """Take one request from `key`'s allowance: 0 when it may go ahead, else the whole
        seconds to wait before the next one would (for Retry-After)."""
        if per_minute <= 0:
            return 0
        rate = per_minute / 60.0
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > _PRUNE_AT:
                    self._prune(now, rate, per_minute)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / rate))

    def charge(self, key: str, *, per_minute: int, cost: float) -> None:
        """Take `cost` more from `key`'s allowance (down to empty), for a request that turned out
        costly; the key's next requests wait for the refill."""
        if per_minute <= 0 or cost <= 0:
            return
        rate = per_minute / 60.0
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(key, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - at) * rate)
            self._buckets[key] = (max(0.0, tokens - cost), now)

    def _prune(self, now: float, rate: float, per_minute: int) -> None:
        full = [k for k, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * rate >= per_minute]
        for key in full:
            del self._buckets[key]
