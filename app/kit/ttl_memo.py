"""A small thread-safe memo whose entries expire: for database look-ups a hot path may reuse for a
few seconds (cachetools' `TTLCache`, bounded in entries, behind a lock)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
DEFAULT_ENTRIES = 4096


class TTLMemo(Generic[K, V]):
    """Values kept `ttl_s` seconds after they were stored, at most `max_entries` of them (the
    least recently used go first); a `ttl_s` of 0 keeps nothing."""

    def __init__(self, ttl_s: float, *, max_entries: int = DEFAULT_ENTRIES,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: TTLCache[K, V] | None = (
            TTLCache(maxsize=max_entries, ttl=ttl_s, timer=timer) if ttl_s > 0 else None
        )

    def get(self, key: K) -> V | None:
        if self._entries is None:
            return None
        with self._lock:
            return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        if self._entries is None:
            return
        with self._lock:
            self._entries[key] = value

    def discard(self, key: K) -> None:
        if self._entries is None:
            return
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        if self._entries is None:
            return 0
        with self._lock:
            return len(self._entries)
