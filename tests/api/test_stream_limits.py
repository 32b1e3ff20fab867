"""Live event streams are capped per tenant and per process (429 with Retry-After), and a
tenant holding many open cannot slow another tenant's requests: waiting streams hold no thread
and no connection, and one poller checks all their jobs. Measured on a real `distill api`."""

from __future__ import annotations

import asyncio
import statistics
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.jobs.watcher import JobWatcher
from app.kit.errors import TooManyRequests
from tests.factories.api import assert_error, job_body, make_key, sentiment_files, upload_model_dir
from tests.factories.api_process import start_api, stop_api

STREAMS = 100


def test_the_caps_count_per_tenant_and_in_total_and_free_on_release() -> None:
    watcher = JobWatcher(url="sqlite://", interval_s=1, max_streams=3, max_per_tenant=2)

    a1, a2 = watcher.reserve("a"), watcher.reserve("a")
    with pytest.raises(TooManyRequests) as per_tenant:
        watcher.reserve("a")
    b1 = watcher.reserve("b")
    with pytest.raises(TooManyRequests) as total:
        watcher.reserve("c")

    assert per_tenant.value.headers == {"Retry-After": "10"}
    assert "tenant" in per_tenant.value.message and "server" in total.value.message
    a1.release()
    a1.release()  # once only
    assert watcher.open_streams() == 2
    watcher.reserve("c")
    for slot in (a2, b1):
        slot.release()
    assert watcher.open_streams() == 1


def test_many_streams_of_one_tenant_leave_another_tenants_requests_fast(
    settings: Any, client: Any, tiny_teacher_dir: Path
) -> None:
    # Given a job of tenant A that stays queued (no worker), and an API polling fast
    auth_a, auth_b = make_key(settings, "acme"), make_key(settings, "globex")
    train, validation = sentiment_files(client, auth_a, train=16, validation=8)
    teacher = upload_model_dir(client, auth_a, tiny_teacher_dir)["id"]
    job = client.post("/v1/distillation/jobs", headers=auth_a,
                      json=job_body(teacher=teacher, training_file=train,
                                    validation_file=validation)).json()["id"]
    proc, url = start_api(settings, DISTILL_EVENTS_POLL_INTERVAL_S="0.05",
                          DISTILL_EVENTS_MAX_STREAMS_PER_TENANT=str(STREAMS),
                          DISTILL_EVENTS_MAX_STREAMS=str(STREAMS + 10))
    try:
        latencies, refused = asyncio.run(_hold_streams(url, job, auth_a, auth_b))
    finally:
        stop_api(proc)

    print(f"{STREAMS} streams of A open: B's GET /v1/models took "
          f"median {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s")
    # Then one stream over A's cap is refused, with Retry-After
    assert_error(refused, 429, code="too_many_streams")
    assert refused.headers["Retry-After"] == "10"
    # And B's requests were served without waiting on A's streams
    assert max(latencies) < 2.0, latencies


async def _hold_streams(url: str, job: str, auth_a: dict[str, str], auth_b: dict[str, str]
                        ) -> tuple[list[float], httpx.Response]:
    path = f"/v1/distillation/jobs/{job}/events?stream=true"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http, \
            AsyncExitStack() as streams:
        # When A opens as many streams as it may (ten at a time)
        for _ in range(STREAMS // 10):
            opened = await asyncio.gather(*(streams.enter_async_context(
                http.stream("GET", path, headers=auth_a)) for _ in range(10)))
            assert all(r.status_code == 200 for r in opened)
        refused = await http.get(path, headers=auth_a)
        await asyncio.sleep(1)  # the streams settle into waiting
        # And B lists its models meanwhile
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            assert (await http.get("/v1/models", headers=auth_b)).status_code == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.2)
    return latencies, refused
