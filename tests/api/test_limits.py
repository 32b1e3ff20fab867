"""Configured limits, each with its own error: requests per API key per minute (429 with
Retry-After) and jobs queued per tenant (429). Upload size, records per file and line length
are in `test_broken_uploads.py`; predict's inputs and text length in `test_predict.py`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.kit.rate_limit import RateLimiter
from tests.factories.api import assert_error, job_body, sentiment_files, upload_model_dir


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    from app.settings import get_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def test_requests_past_a_keys_allowance_are_429_with_retry_after(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, DISTILL_RATE_LIMIT_PER_MINUTE="3")
    respelled = {"Authorization": auth["Authorization"].replace("Bearer ", "bearer  ")}

    allowed = [client.get("/v1/files", headers=auth) for _ in range(3)]
    refused = client.get("/v1/files", headers=auth)
    same_key = client.post("/v1/files", headers=respelled, data={"purpose": "train"})
    other_key = client.get("/v1/files", headers=other_auth)
    no_key = client.get("/v1/files")

    assert [r.status_code for r in allowed] == [200, 200, 200]
    error = assert_error(refused, 429, code="rate_limited")
    assert "3 per minute" in error["message"]
    # One request at 3 a minute is 20 s, less what has refilled since the first request.
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert_error(same_key, 429, code="rate_limited")  # another spelling of the key, its bucket
    assert other_key.status_code == 200  # each key has its own allowance
    assert_error(no_key, 401)  # refused for the key, not counted
    assert client.get("/healthz").status_code == 200


def test_zero_turns_the_rate_limit_off(
    client: TestClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(monkeypatch, DISTILL_RATE_LIMIT_PER_MINUTE="0")

    assert {client.get("/v1/files", headers=auth).status_code for _ in range(20)} == {200}


def test_token_bucket_bursts_to_its_allowance_then_keeps_its_rate() -> None:
    clock = [1000.0]
    limiter = RateLimiter(clock=lambda: clock[0])

    burst = [limiter.acquire("k", per_minute=60) for _ in range(61)]
    clock[0] += 0.5
    half_a_second = limiter.acquire("k", per_minute=60)
    clock[0] += 0.5
    one_second = limiter.acquire("k", per_minute=60)
    clock[0] += 3600
    after_an_hour = [limiter.acquire("k", per_minute=60) for _ in range(61)]

    assert burst == [0] * 60 + [1]
    assert half_a_second == 1  # half a token: wait a second more
    assert one_second == 0
    assert after_an_hour == [0] * 60 + [1]  # refilled to the allowance, never beyond it
    assert limiter.acquire("other", per_minute=60) == 0


def test_idle_buckets_are_dropped_past_many_keys() -> None:
    clock = [0.0]
    limiter = RateLimiter(clock=lambda: clock[0])
    for n in range(10_001):
        limiter.acquire(f"key-{n}", per_minute=60)
    clock[0] += 120

    limiter.acquire("fresh", per_minute=60)

    assert len(limiter._buckets) == 1


@pytest.fixture
def job_setup(client: TestClient, auth: dict[str, str], tiny_teacher_dir: Path) -> dict[str, Any]:
    train, val = sentiment_files(client, auth, train=16, validation=8)
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    return job_body(teacher=teacher, training_file=train, validation_file=val)


def test_jobs_past_a_tenants_queue_limit_are_429(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str],
    tiny_teacher_dir: Path, job_setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, DISTILL_MAX_QUEUED_JOBS_PER_TENANT="2")
    url = "/v1/distillation/jobs"

    first = client.post(url, headers={**auth, "Idempotency-Key": "one"}, json=job_setup)
    second = client.post(url, headers=auth, json=job_setup)
    third = client.post(url, headers=auth, json=job_setup)
    replay = client.post(url, headers={**auth, "Idempotency-Key": "one"}, json=job_setup)

    assert (first.status_code, second.status_code) == (201, 201)
    error = assert_error(third, 429, code="too_many_queued_jobs")
    assert "the limit is 2" in error["message"]
    assert replay.status_code == 200  # a replay creates nothing, so the limit lets it through
    assert len(client.get(url, headers=auth).json()["data"]) == 2
    # Another tenant queues against its own limit.
    theirs = job_body(teacher=upload_model_dir(client, other_auth, tiny_teacher_dir)["id"],
                      training_file=sentiment_files(client, other_auth)[0])
    assert client.post(url, headers=other_auth, json=theirs).status_code == 201
    # A cancelled job leaves the queue, and makes room.
    cancel = client.post(f"{url}/{first.json()['id']}/cancel", headers=auth)
    assert cancel.json()["status"] == "cancelled"
    assert client.post(url, headers=auth, json=job_setup).status_code == 201


def test_racing_creates_keep_the_queue_limit(
    client: TestClient, auth: dict[str, str], job_setup: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, DISTILL_MAX_QUEUED_JOBS_PER_TENANT="1")
    statuses: list[int] = []
    start = threading.Barrier(4)

    def create() -> None:
        start.wait()
        response = client.post("/v1/distillation/jobs", headers=auth, json=job_setup)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201, 429, 429, 429]
    assert len(client.get("/v1/distillation/jobs", headers=auth).json()["data"]) == 1


def test_refused_job_creations_use_up_the_keys_rate_limit(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str],
    job_setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 20 requests a minute, a refused creation costing 10 more, and a body the checks refuse
    configure(monkeypatch, DISTILL_RATE_LIMIT_PER_MINUTE="20",
              DISTILL_RATE_LIMIT_REFUSED_JOB_COST="10")
    refused_body = {**job_setup, "data": {**job_setup["data"], "text_column": "nope"}}
    url = "/v1/distillation/jobs"

    # When the key sends it again and again
    first = client.post(url, headers=auth, json=refused_body)
    second = client.post(url, headers=auth, json=refused_body)
    third = client.post(url, headers=auth, json=refused_body)

    # Then two refusals (1 + 10 requests' worth each) use up the minute's allowance
    assert_error(first, 400, code="missing_column")
    assert_error(second, 400, code="missing_column")
    assert_error(third, 429, code="rate_limited")
    assert_error(client.get("/v1/files", headers=auth), 429, code="rate_limited")
    assert client.get("/v1/files", headers=other_auth).status_code == 200


def test_a_jobs_checks_read_a_file_only_up_to_the_bound(
    client: TestClient, auth: dict[str, str], tiny_teacher_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given checks bounded to 16 records, and a training file whose 17th record is bad
    from tests.factories.api import upload_records
    from tests.factories.records import sentiment_records

    configure(monkeypatch, DISTILL_VALIDATION_MAX_RECORDS="16")
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    rows = sentiment_records(16)
    past = upload_records(client, auth, [*rows, {"text": "odd", "label": 1.5}])
    within = upload_records(client, auth, [*rows[:8], {"text": "odd", "label": 1.5}, *rows[8:]])
    url = "/v1/distillation/jobs"

    # When jobs on each are created
    beyond = client.post(url, headers=auth, json=job_body(teacher=teacher, training_file=past))
    inside = client.post(url, headers=auth, json=job_body(teacher=teacher, training_file=within))

    # Then the record past the bound was never read (the worker checks the whole file), while
    # one within it is refused as before
    assert beyond.status_code == 201, beyond.text
    assert_error(inside, 400, code="invalid_records")


def test_job_creations_past_the_processs_check_slots_wait_then_get_503(
    client: TestClient, auth: dict[str, str], job_setup: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given one check slot, a short wait, and a creation whose checks are held mid-way
    import threading

    from app.jobs import service

    configure(monkeypatch, DISTILL_MAX_CONCURRENT_VALIDATIONS="1", DISTILL_VALIDATION_WAIT_S="0.5")
    entered, release = threading.Event(), threading.Event()
    real_create = service.create_job

    def held_create(**kwargs: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return real_create(**kwargs)

    monkeypatch.setattr(service, "create_job", held_create)
    url = "/v1/distillation/jobs"
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(client.post(url, headers=auth,
                                                                       json=job_setup)))
    first.start()
    assert entered.wait(30)

    # When a second creation arrives while the first holds the slot, and a third after it ends
    try:
        busy = client.post(url, headers=auth, json=job_setup)
    finally:
        release.set()
        first.join(30)
    after = client.post(url, headers=auth, json=job_setup)

    # Then the second is told to come back (503 busy, Retry-After), with no thread held long;
    # the first and the third are created
    assert_error(busy, 503, code="busy")
    assert busy.headers["Retry-After"] == "1"
    assert [r.status_code for r in results] == [201] and after.status_code == 201
