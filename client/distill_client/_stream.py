"""Following a job live: server-sent events, or polling where the server has none.

The stream (`GET …/events?stream=true`, `text/event-stream`) sends `job.update` (the job),
`job.event` (an event, its id in `id:`) and `end` once the job is final. A dropped connection is
resumed with `Last-Event-ID`, so no event is missed or repeated. A server that answers the same
URL with the plain JSON page (one without the stream) is followed by polling `events?after=`
and the job instead: the caller sees the same sequence either way.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import EventSource

from distill_client._http import Transport
from distill_client.errors import APIConnectionError
from distill_client.types import Job, JobEvent, Page

StreamItem = Job | JobEvent

# The server sends a keep-alive comment every ~15 s: a read that waits longer has lost it.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)


def stream_job(transport: Transport, job_id: str, *, poll: float, max_reconnects: int
               ) -> Iterator[StreamItem]:
    """Yield the job (on connect and on each change) and its events, oldest first, until the
    job is final and every event has been yielded."""
    path = f"/v1/distillation/jobs/{job_id}/events"
    last_event: str | None = None
    idle_connections = 0  # consecutive connections that brought nothing
    while True:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if last_event is not None:
            headers["Last-Event-ID"] = last_event
        response = transport.send(
            functools.partial(transport.http.build_request, "GET", path,
                              params={"stream": "true"}, headers=headers, timeout=STREAM_TIMEOUT),
            idempotent=True, stream=True)
        received = False
        reason = "the event stream closed before the job finished"
        try:
            content_type = response.headers.get("content-type", "").partition(";")[0].strip()
            if content_type != "text/event-stream":
                response.close()
                yield from poll_job(transport, job_id, after=last_event, poll=poll)
                return
            for sse in EventSource(response).iter_sse():
                received = True
                if sse.event == "job.event":
                    event = JobEvent.model_validate_json(sse.data)
                    last_event = sse.id or event.id
                    yield event
                elif sse.event == "job.update":
                    yield Job.model_validate_json(sse.data)
                elif sse.event == "end":
                    return
        except httpx.TransportError as exc:  # the connection dropped mid-stream: resume
            reason = str(exc) or type(exc).__name__
        finally:
            response.close()
        idle_connections = 0 if received else idle_connections + 1
        if idle_connections > max_reconnects:
            raise APIConnectionError(str(response.request.url), reason)
        time.sleep(min(0.5 * 2 ** idle_connections, 8.0))


def poll_job(transport: Transport, job_id: str, *, after: str | None, poll: float
             ) -> Iterator[StreamItem]:
    """The same sequence as the stream, by polling: the job when it changes, then new events."""
    previous: dict[str, Any] | None = None
    while True:
        # The job is read before the events: once it reads final, every event it wrote is
        # already in the list that follows, so none is missed at the end.
        job = Job.model_validate(transport.request("GET", f"/v1/distillation/jobs/{job_id}"))
        current = job.to_dict()
        if current != previous:
            previous = current
            yield job
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after is not None:
                params["after"] = after
            page = Page[JobEvent].model_validate(
                transport.request("GET", f"/v1/distillation/jobs/{job_id}/events", params=params))
            for event in page.data:
                after = event.id
                yield event
            if not page.has_more:
                break
        if job.finished:
            return
        time.sleep(poll)
