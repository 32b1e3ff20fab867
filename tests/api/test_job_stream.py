"""Live job events over SSE (`/events?stream=true`) against the real app on Postgres: the order
of `job.update` / `job.event` / `end`, resuming from `Last-Event-ID`, tenant isolation, and a
stream that neither outlives its client nor keeps a database connection while it waits.

A "worker" here is the job lifecycle's own functions (claim, require, finish) run from a thread,
so the stream sees exactly the writes a real worker makes, at a pace the test controls."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from app.jobs import lifecycle, repository
from app.jobs.lifecycle import Lease
from app.kit.db import engine_for, session_scope
from tests.factories.api import assert_error, job_body, sentiment_files, upload_model_dir


@pytest.fixture
def fast(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A TestClient on settings that poll the database every 0.1 s."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_EVENTS_POLL_INTERVAL_S", "0.1")
    get_settings.cache_clear()
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def job_id(fast: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> str:
    train, validation = sentiment_files(fast, auth, train=16, validation=8)
    teacher = upload_model_dir(fast, auth, tiny_teacher_dir)["id"]
    response = fast.post("/v1/distillation/jobs", headers=auth,
                         json=job_body(teacher=teacher, training_file=train,
                                       validation_file=validation))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def parse_sse(body: str) -> list[dict[str, Any]]:
    """The events of an SSE body: [{"event", "id", "data" (parsed JSON)}], comments dropped."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = fields.get(name, "") + value if name == "data" else value
        if fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def stream(client: Any, auth: dict[str, str], job_id: str, **headers: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/distillation/jobs/{job_id}/events", params={"stream": "true"},
                          headers={**auth, **headers})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


def fake_worker(settings: Any, job_id: str) -> None:
    """Claim the job, report a stage and two metrics events, then succeed (as a worker does)."""
    url = settings.sqlalchemy_url
    time.sleep(0.4)
    with session_scope(url) as session:
        job = lifecycle.claim(session, job_id=job_id, worker_id="w1")
        assert job is not None
        lease = Lease(job_id, "w1", job.attempts)
    for step, loss in ((1, 0.9), (2, 0.5)):
        time.sleep(0.3)
        with session_scope(url) as session:
            lifecycle.require(session, lease, progress={"stage": "distill", "percent": 50.0 * step,
                                                        "step": step, "total_steps": 2, "epoch": 1,
                                                        "eta_seconds": None},
                              metrics={"train_loss": loss, "eval": {}})
            repository.add_event(session, job_id=job_id, type="metrics", message=f"step {step}",
                                 data={"step": step, "train_loss": loss})
    time.sleep(0.3)
    with session_scope(url) as session:
        assert lifecycle.finish(session, lease, status="succeeded")
        repository.add_event(session, job_id=job_id, message="Job succeeded.")


def test_stream_follows_a_job_live_until_end(fast: Any, auth: dict[str, str], job_id: str,
                                             settings: Any) -> None:
    # Given a worker that will run the queued job while the stream is open
    worker = threading.Thread(target=fake_worker, args=(settings, job_id))
    worker.start()

    # When the client follows the job from the start
    events = stream(fast, auth, job_id)
    worker.join()

    # Then it got the job first, every status change, each event once, in order, then `end`
    kinds = [e["event"] for e in events]
    assert kinds[0] == "job.update" and "id" not in events[0]
    assert events[0]["data"]["status"] == "queued"
    statuses = [e["data"]["status"] for e in events if e["event"] == "job.update"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
    losses = [e["data"]["metrics"]["train_loss"] for e in events if e["event"] == "job.update"]
    assert 0.9 in losses and 0.5 in losses  # metrics changes are updates too
    assert kinds[-1] == "end" and events[-1]["data"] == {"status": "succeeded"}
    listed = fast.get(f"/v1/distillation/jobs/{job_id}/events", headers=auth).json()["data"]
    sent = [e for e in events if e["event"] == "job.event"]
    assert [e["data"] for e in sent] == listed  # exactly the items of the JSON list, in order
    assert [e["id"] for e in sent] == [e["id"] for e in listed]
    assert len(listed) == 4  # created, two metrics, succeeded
    final = fast.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    last_update = [e for e in events if e["event"] == "job.update"][-1]
    assert last_update["data"] == final  # exactly the GET body


def test_stream_resumes_after_last_event_id(fast: Any, auth: dict[str, str], job_id: str,
                                            settings: Any) -> None:
    # Given a finished job with four events
    fake_worker(settings, job_id)
    listed = fast.get(f"/v1/distillation/jobs/{job_id}/events", headers=auth).json()["data"]

    # When a client resumes after the second one (header), or after the first (query)
    resumed = stream(fast, auth, job_id, **{"Last-Event-ID": listed[1]["id"]})
    by_query = parse_sse(fast.get(f"/v1/distillation/jobs/{job_id}/events",
                                  params={"stream": "true", "after": listed[0]["id"]},
                                  headers=auth).text)

    # Then the job comes first, then only the later events, then `end`
    assert resumed[0]["event"] == "job.update" and resumed[0]["data"]["status"] == "succeeded"
    assert [e["id"] for e in resumed if e["event"] == "job.event"] == [e["id"] for e in listed[2:]]
    assert [e["id"] for e in by_query if e["event"] == "job.event"] == \
        [e["id"] for e in listed[1:]]
    assert resumed[-1] == {"event": "end", "data": {"status": "succeeded"}}


def test_cancelled_job_streams_its_events_then_end(fast: Any, auth: dict[str, str],
                                                   job_id: str) -> None:
    assert fast.post(f"/v1/distillation/jobs/{job_id}/cancel", headers=auth).json()["status"] \
        == "cancelled"

    events = stream(fast, auth, job_id)

    assert events[0]["event"] == "job.update"
    assert events[-1] == {"event": "end", "data": {"status": "cancelled"}}
    assert [e["event"] for e in events].count("job.update") == 1  # nothing changed since


def test_another_tenants_job_and_a_bad_event_id_are_refused(
    fast: Any, auth: dict[str, str], other_auth: dict[str, str], job_id: str
) -> None:
    url = f"/v1/distillation/jobs/{job_id}/events?stream=true"
    assert_error(fast.get(url, headers=other_auth), 404, param="job_id")
    assert_error(fast.get(url, headers={**auth, "Last-Event-ID": "nonsense"}), 400, param="after")
    assert fast.get(url).status_code == 401


def test_without_stream_the_endpoint_answers_the_json_page(fast: Any, auth: dict[str, str],
                                                           job_id: str) -> None:
    response = fast.get(f"/v1/distillation/jobs/{job_id}/events", headers=auth)

    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "list" and body["has_more"] is False
    assert body["data"][0]["message"] == "Job created and queued."


def test_disconnect_ends_the_stream_which_holds_no_connection_while_waiting(
    fast: Any, auth: dict[str, str], job_id: str, settings: Any
) -> None:
    # Given an open stream on a job that will never finish (no worker)
    app = fast.app
    sent: list[dict[str, Any]] = []
    first_chunk = anyio.Event()
    idle_in_transaction: list[int] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        await first_chunk.wait()
        # While the stream waits between polls, no session of this database sits in a transaction
        await anyio.sleep(0.5)
        idle_in_transaction.append(await anyio.to_thread.run_sync(_idle_in_transaction, settings))
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": f"/v1/distillation/jobs/{job_id}/events",
             "raw_path": f"/v1/distillation/jobs/{job_id}/events".encode(),
             "query_string": b"stream=true", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("testserver", 80),
             "headers": [(b"host", b"testserver"),
                         (b"authorization", auth["Authorization"].encode())]}

    async def run() -> None:
        # When the client disconnects, the app call returns (the generator ended) at once
        with anyio.fail_after(15):
            await app(scope, receive, send)

    anyio.run(run)

    # Then the stream had started, and nothing held a transaction open while it waited
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert b"event: job.update" in b"".join(m.get("body", b"") for m in sent[1:])
    assert idle_in_transaction == [0]


def _idle_in_transaction(settings: Any) -> int:
    with engine_for(settings.sqlalchemy_url).connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction'")).scalar_one())
