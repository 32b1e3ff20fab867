"""Transient failures between the client and a live API, injected by a real proxy: 5xx and 429
are retried (429 after its Retry-After), a create whose answer was lost is sent again with the
same Idempotency-Key and makes one job, and an upload whose answer was lost is not repeated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distill_client import APIConnectionError, Client, InternalServerError

from tests.factories.api import job_body
from tests.factories.http_faults import FaultProxy
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.server import LiveApi


@pytest.fixture
def proxy(api: LiveApi) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(api.url)
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture
def via_proxy(proxy: FaultProxy, api_key: str) -> Iterator[Client]:
    with Client(proxy.url, api_key, max_retries=3) as client:
        yield client


def test_503_then_200_is_retried(proxy: FaultProxy, via_proxy: Client) -> None:
    proxy.then("503", "502")
    assert via_proxy.files.list().data == []
    assert [s.action for s in proxy.requests("GET", "/v1/files")] == ["503", "502", "pass"]


def test_429_waits_for_retry_after(proxy: FaultProxy, via_proxy: Client) -> None:
    proxy.then("429:2")
    started = time.monotonic()
    assert via_proxy.models.list().data
    waited = time.monotonic() - started
    assert [s.action for s in proxy.requests("GET", "/v1/models")] == ["429:2", "pass"]
    assert waited >= 2.0  # the server's Retry-After, not the client's first backoff (~0.5 s)


def test_retries_are_bounded_and_the_last_error_is_raised(proxy: FaultProxy, via_proxy: Client
                                                          ) -> None:
    proxy.then(*["503"] * 10)
    with pytest.raises(InternalServerError) as failed:
        via_proxy.files.list()
    assert (failed.value.status_code, failed.value.code) == (503, "service_unavailable")
    assert len(proxy.requests("GET", "/v1/files")) == 4  # 1 + max_retries


def test_a_create_whose_response_was_lost_makes_one_job(
    proxy: FaultProxy, via_proxy: Client, dc: Client, tmp_path: Path
) -> None:
    # Given a training file and a proxy that loses the server's answer to the first create
    train = dc.files.create(write_jsonl(tmp_path / "t.jsonl", sentiment_records(16, seed=1)))
    body = job_body(teacher="all-minilm-l6-v2", training_file=train.id)
    body["teacher"]["finetune"] = {"epochs": 1}
    proxy.then("drop")

    # When the client creates the job
    job = via_proxy.jobs.create(body)

    # Then it sent the create twice with one key, and the server holds one job: this one
    creates = proxy.requests("POST", "/v1/distillation/jobs")
    assert [s.action for s in creates] == ["drop", "pass"]
    keys = {s.headers.get("Idempotency-Key") or s.headers.get("idempotency-key") for s in creates}
    assert len(keys) == 1 and None not in keys
    assert [j.id for j in dc.jobs.list().data] == [job.id]


def test_an_upload_whose_response_was_lost_is_not_repeated(
    proxy: FaultProxy, via_proxy: Client, tmp_path: Path
) -> None:
    proxy.then("drop")
    with pytest.raises(APIConnectionError) as lost:
        via_proxy.files.create(write_jsonl(tmp_path / "t.jsonl", sentiment_records(4, seed=1)))
    assert lost.value.url == f"{proxy.url}/v1/files"
    assert len(proxy.requests("POST", "/v1/files")) == 1
