"""`jobs.stream` on the server-sent events of /tmp/sse_spec.md (`job.update`, `job.event` with
its id, `end`), served by a real uvicorn app in the test: the stream is read in order, a
connection dropped mid-stream is resumed with `Last-Event-ID`, and nothing is repeated."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from distill_client import Client, Job, JobEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.factories.server import free_port

JOB_ID = "job-sse"


def _job(status: str, percent: float) -> dict[str, Any]:
    return {"id": JOB_ID, "object": "distillation.job", "status": status, "task": "t",
            "progress": {"stage": "distill", "percent": percent, "step": 1, "total_steps": 2}}


def _event(n: int) -> dict[str, Any]:
    return {"id": f"evt-{n}", "object": "distillation.job.event", "created_at": n,
            "level": "info", "type": "message", "message": f"event {n}", "data": None}


class SseServer:
    """Four events; the first connection breaks after two of them (mid-stream, no `end`)."""

    def __init__(self) -> None:
        self.last_event_ids: list[str | None] = []
        self.app = Starlette(routes=[Route(f"/v1/distillation/jobs/{JOB_ID}/events", self.events)])

    async def events(self, request: Request) -> Response:
        assert request.query_params.get("stream") == "true"
        assert request.headers.get("authorization") == "Bearer k"
        last = request.headers.get("last-event-id")
        self.last_event_ids.append(last)
        first_connection = len(self.last_event_ids) == 1
        start = 1 if last is None else int(last.removeprefix("evt-")) + 1

        async def body() -> AsyncIterator[str]:
            yield f"event: job.update\ndata: {json.dumps(_job('running', 10.0))}\n\n"
            yield ": ping\n\n"
            for n in range(start, 5):
                yield f"id: evt-{n}\nevent: job.event\ndata: {json.dumps(_event(n))}\n\n"
                if first_connection and n == 2:
                    raise ConnectionResetError("the proxy in between went away")
            yield f"event: job.update\ndata: {json.dumps(_job('succeeded', 100.0))}\n\n"
            yield 'event: end\ndata: {"status": "succeeded"}\n\n'

        return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture
def sse_server() -> Iterator[tuple[SseServer, str]]:
    app = SseServer()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app.app, host="127.0.0.1", port=port,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the SSE test server did not start"
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_stream_resumes_after_a_dropped_connection(sse_server: tuple[SseServer, str]) -> None:
    app, url = sse_server
    with Client(url, "k") as client:
        items = list(client.jobs.stream(JOB_ID))

    events = [i.id for i in items if isinstance(i, JobEvent)]
    jobs = [i for i in items if isinstance(i, Job)]
    assert events == ["evt-1", "evt-2", "evt-3", "evt-4"]  # each once, in order
    assert app.last_event_ids == [None, "evt-2"]  # resumed after the last one received
    assert isinstance(items[0], Job) and jobs[-1].status == "succeeded"
    assert jobs[-1].progress.percent == 100.0
