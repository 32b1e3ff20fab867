"""A small thread-safe memo whose entries expire: for database look-ups a hot path may reuse for a
few seconds (cachetools' `TTLCache`, bounded in entries, behind a lock)."""

from __future__ import annotations

import asyncio
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
        # Look-ups in flight, by key (touched on the event loop only, so no lock).
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        """The value, or `load()` run in a worker thread and kept; concurrent misses of one key
        share one `load` (single flight): when an entry expires under 32 concurrent calls, one
        database look-up runs, not 32 queued on the thread pool. An exception reaches every
        caller that waited for it and nothing is kept. Call from the event loop only."""
        import anyio.to_thread

        while True:
            value = self.get(key)
            if value is not None:
                return value
            pending = self._loading.get(key)
            if pending is None:
                break
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                # the caller doing the look-up was cancelled: look again (one of us loads)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await anyio.to_thread.run_sync(load)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._loading[key]
        self.put(key, value)
        future.set_result(value)
        return value

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
