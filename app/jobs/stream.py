"""A job's live events as server-sent events (`GET /v1/distillation/jobs/{id}/events?stream=true`).

The wire format (shared with the client, the CLI and the dashboard): on connect a `job.update`
with the job object; then each job event, oldest first, as `job.event` with its id in `id:`; a
`job.update` again whenever the job object changes; and once the job has finished and every event
has been sent, `end` with its final status, after which the stream closes.

An open stream costs neither a database connection nor a server thread while it waits: the
generator is async, and each poll (about once a second) opens a fresh session in a worker thread
and closes it before the generator sleeps. A client that goes away cancels the generator at its
next `await` (sse-starlette watches for the disconnect), so nothing polls for a dead stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.jobs import repository
from app.jobs.schemas import JobEventOut, JobOut
from app.jobs.service import event_to_out, to_out
from app.jobs.status import FINISHED
from app.kit.db import session_factory

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
    *, url: str, tenant_id: str, job_id: str, after_seq: int | None, poll_interval_s: float
) -> AsyncIterator[ServerSentEvent]:
    """The stream's events, until the job has finished (or the client has gone)."""
    last_update: str | None = None
    while True:
        snap = await anyio.to_thread.run_sync(
            partial(read_snapshot, url=url, tenant_id=tenant_id, job_id=job_id,
                    after_seq=after_seq))
        if snap.job is None:
            return
        update = snap.job.model_dump_json()
        if update != last_update:
            last_update = update
            yield ServerSentEvent(update, event="job.update", sep=SEP)
        for event in snap.events:
            after_seq = repository.event_seq(event.id)
            yield ServerSentEvent(event.model_dump_json(), id=event.id, event="job.event", sep=SEP)
        if snap.more:
            continue
        if snap.job.status in FINISHED:
            yield ServerSentEvent(json.dumps({"status": snap.job.status}), event="end", sep=SEP)
            return
        await anyio.sleep(poll_interval_s)


def event_stream_response(
    *, url: str, tenant_id: str, job_id: str, after: str | None, poll_interval_s: float,
    ping_interval_s: float,
) -> EventSourceResponse:
    """`text/event-stream` of `job_events` after the event id `after` (already checked), with
    `: ping` comments to keep idle proxies open."""
    after_seq = repository.event_seq(after) if after else None
    return EventSourceResponse(
        job_events(url=url, tenant_id=tenant_id, job_id=job_id, after_seq=after_seq,
                   poll_interval_s=poll_interval_s),
        ping=ping_interval_s,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep=SEP),
        sep=SEP,  # sse-starlette also sets `Cache-Control: no-store`, `X-Accel-Buffering: no`
    )
