"""A job's live events as server-sent events (`GET /v1/distillation/jobs/{id}/events?stream=true`).

The wire format (shared with the client, the CLI and the dashboard): on connect a `job.update`
with the job object; then each job event, oldest first, as `job.event` with its id in `id:`; a
`job.update` again whenever the job object changes; and once the job has finished and every event
has been sent, `end` with its final status, after which the stream closes.

An open stream costs neither a database connection nor a server thread while it waits: it
awaits its `Watch`, which the process's one poller (`app.jobs.watcher`) sets when the job or its
events change, and only then reads its rows, in a short-lived session. A client that goes away
cancels the generator at its await (sse-starlette watches for the disconnect), which lets go of
the watch and of the stream's place under the caps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from app.jobs import repository
from app.jobs.schemas import JobEventOut, JobOut
from app.jobs.service import event_to_out, to_out
from app.jobs.status import FINISHED
from app.jobs.watcher import JobWatcher, Slot
from app.kit.db import session_factory
from app.settings import Settings

# Events per poll; a full page is followed at once by the next one, without the pause.
PAGE = 500
# The separator every SSE parser accepts; sse-starlette's default is CRLF.
SEP = "\n"


@dataclass
class Snapshot:
    job: JobOut | None  # None: the job is gone (deleted with its tenant)
    events: list[JobEventOut] = field(default_factory=list)
    more: bool = False  # a full page: more events wait


def read_snapshot(*, url: str, tenant_id: str, job_id: str, after_seq: int | None) -> Snapshot:
    """The job, then its events after `after_seq`, in one short-lived session (run in a thread).

    The job is read before the events: an event committed before the job turned final is then
    always in this page or a later one, so `end` is never sent ahead of an event."""
    with session_factory(url)() as session:
        row = repository.get_for_tenant(session, tenant_id=tenant_id, job_id=job_id)
        if row is None:
            return Snapshot(job=None)
        job = to_out(row)
        rows = repository.list_events(session, job_id=job_id, after=after_seq, limit=PAGE)
        return Snapshot(job=job, events=[event_to_out(r) for r in rows], more=len(rows) == PAGE)


async def job_events(
    *, watcher: JobWatcher, tenant_id: str, job_id: str, after_seq: int | None
) -> AsyncIterator[ServerSentEvent]:
    """The stream's events, until the job has finished (or the client has gone)."""
    last_update: str | None = None
    with watcher.watch(job_id) as watch:
        while True:
            watch.woken.clear()  # before the read: a change during it wakes the stream again
            snap = await watcher.read(
                partial(read_snapshot, url=watcher.url, tenant_id=tenant_id, job_id=job_id,
                        after_seq=after_seq))
            if snap.job is None:
                return
            update = snap.job.model_dump_json()
            if update != last_update:
                last_update = update
                yield ServerSentEvent(update, event="job.update", sep=SEP)
            for event in snap.events:
                after_seq = repository.event_seq(event.id)
                yield ServerSentEvent(event.model_dump_json(), id=event.id, event="job.event",
                                      sep=SEP)
            if snap.more:
                continue
            if snap.job.status in FINISHED:
                yield ServerSentEvent(json.dumps({"status": snap.job.status}), event="end",
                                      sep=SEP)
                return
            await watch.woken.wait()


_watcher_lock = threading.Lock()


def job_watcher(state: Any, settings: Settings) -> JobWatcher:
    """The app's one `JobWatcher` (kept on `app.state`; endpoints run in several threads)."""
    with _watcher_lock:
        watcher: JobWatcher | None = getattr(state, "job_watcher", None)
        if watcher is None:
            watcher = state.job_watcher = JobWatcher(
                url=settings.sqlalchemy_url, interval_s=settings.events_poll_interval_s,
                max_streams=settings.events_max_streams,
                max_per_tenant=settings.events_max_streams_per_tenant)
        return watcher


class _HeldEventSourceResponse(EventSourceResponse):
    """Gives the stream's place under the caps back however the response ends."""

    def __init__(self, *args: Any, slot: Slot, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


def event_stream_response(
    *, watcher: JobWatcher, slot: Slot, tenant_id: str, job_id: str, after: str | None,
    ping_interval_s: float,
) -> EventSourceResponse:
    """`text/event-stream` of `job_events` after the event id `after` (already checked), with
    `: ping` comments to keep idle proxies open; `slot` (from `watcher.reserve`) is released
    when it ends."""
    after_seq = repository.event_seq(after) if after else None
    return _HeldEventSourceResponse(
        job_events(watcher=watcher, tenant_id=tenant_id, job_id=job_id, after_seq=after_seq),
        slot=slot,
        ping=ping_interval_s,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep=SEP),
        sep=SEP,  # sse-starlette also sets `Cache-Control: no-store`, `X-Accel-Buffering: no`
    )
