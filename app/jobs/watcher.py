"""What keeps a process's live event streams cheap: one poller for all of them, and caps.

Every open stream used to poll the database on its own, a thread and a pooled connection per
poll, so a few hundred streams of one tenant took the shared thread pool and the connection pool
from every other request. Here one task per process reads, once per interval and in one query,
a change mark of every job that a stream follows (`repository.change_marks`), and wakes the
streams of the jobs whose mark moved; a waiting stream holds only an `asyncio.Event`. A woken
stream reads its rows through a small limiter of its own, so that however many wake at once,
they take a few threads and connections, never the pool that serves other requests.

The caps (`DISTILL_EVENTS_MAX_STREAMS`, `…_PER_TENANT`) bound the streams a process holds;
one over them is refused with 429 before it starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from app.jobs import repository
from app.kit.db import session_factory
from app.kit.errors import TooManyRequests

log = logging.getLogger(__name__)

T = TypeVar("T")
# Threads (and so database connections) that the poll and the streams' reads may use at once.
READ_THREADS = 4
# Seconds a client refused for the caps is asked to wait: streams end as jobs do.
RETRY_AFTER_S = 10
_UNSEEN: Any = object()


@dataclass(eq=False)
class Watch:
    """A stream's hold on a job: `woken` is set whenever the job's change mark moves."""

    job_id: str
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    seen: Any = _UNSEEN  # the mark it was last woken for


class Slot:
    """A stream's place under the caps, released once (by the response, however it ends)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class JobWatcher:
    """The process's poller and caps for live event streams on one database."""

    def __init__(self, *, url: str, interval_s: float, max_streams: int,
                 max_per_tenant: int) -> None:
        self.url = url
        self.interval_s = interval_s
        self.max_streams = max_streams
        self.max_per_tenant = max_per_tenant
        self._lock = threading.Lock()  # the caps are taken in the endpoint's thread
        self._per_tenant: dict[str, int] = {}
        self._watches: set[Watch] = set()  # these and the task: on the event loop only
        self._task: asyncio.Task[None] | None = None
        self._limiter: CapacityLimiter | None = None

    def reserve(self, tenant_id: str) -> Slot:
        """A place for one more stream of `tenant_id`, or 429 over either cap."""
        with self._lock:
            if sum(self._per_tenant.values()) >= self.max_streams:
                raise TooManyRequests(
                    f"This server has {self.max_streams} live event streams open, its limit; "
                    "retry later or poll the events without stream=true.",
                    code="too_many_streams", retry_after_s=RETRY_AFTER_S)
            if self._per_tenant.get(tenant_id, 0) >= self.max_per_tenant:
                raise TooManyRequests(
                    f"This tenant has {self.max_per_tenant} live event streams open, its limit; "
                    "close one, or poll the events without stream=true.",
                    code="too_many_streams", retry_after_s=RETRY_AFTER_S)
            self._per_tenant[tenant_id] = self._per_tenant.get(tenant_id, 0) + 1
        return Slot(partial(self._free, tenant_id))

    def _free(self, tenant_id: str) -> None:
        with self._lock:
            left = self._per_tenant[tenant_id] - 1
            if left:
                self._per_tenant[tenant_id] = left
            else:
                del self._per_tenant[tenant_id]

    def open_streams(self) -> int:
        with self._lock:
            return sum(self._per_tenant.values())

    @contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        """Follow `job_id` while the block runs (on the event loop)."""
        watch = Watch(job_id)
        self._watches.add(watch)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        try:
            yield watch
        finally:
            self._watches.discard(watch)

    async def read(self, func: Callable[[], T]) -> T:
        """`func` (a database read) in a thread, a few at a time, off the shared thread pool."""
        if self._limiter is None:
            self._limiter = CapacityLimiter(READ_THREADS)
        return await anyio.to_thread.run_sync(func, limiter=self._limiter)

    async def _poll(self) -> None:
        """Until no stream is left: read every followed job's mark, wake those that moved."""
        while self._watches:
            job_ids = {w.job_id for w in self._watches}
            try:
                marks = await self.read(partial(self._read_marks, job_ids))
            except Exception:
                log.warning("live event streams: reading the jobs failed; retrying", exc_info=True)
            else:
                for watch in list(self._watches):
                    mark = marks.get(watch.job_id)  # None: the job is gone, its stream ends
                    if mark != watch.seen:
                        watch.seen = mark
                        watch.woken.set()
            await asyncio.sleep(self.interval_s)

    def _read_marks(self, job_ids: set[str]) -> dict[str, tuple[Any, ...]]:
        with session_factory(self.url)() as session:
            return repository.change_marks(session, job_ids=job_ids)
