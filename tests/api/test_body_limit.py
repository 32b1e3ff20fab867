"""Request bodies are capped (`DISTILL_MAX_REQUEST_BODY_BYTES`) before anything reads or parses
them, so before the key check: a declared length over the cap is answered 413 without reading
the body, a chunked body is refused at the first chunk past it, and the API's memory does not
grow with what was sent. Upload routes keep their own limits."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.factories.api import assert_error, make_key, upload_records
from tests.factories.api_process import peak_rss_bytes, reset_peak_rss, start_api, stop_api

MB = 1024 * 1024
JOBS = "/v1/distillation/jobs"


def nested_lists(size: int) -> Iterator[bytes]:
    """`[[],[],…]` of about `size` bytes, a megabyte a chunk: the JSON that costs the most memory
    per byte to parse (an empty list object for every three bytes)."""
    chunk = b"[]," * (MB // 3)
    yield b"["
    for _ in range(size // len(chunk)):
        yield chunk
    yield b"[]]"


@pytest.fixture
def api(settings: Any) -> Iterator[tuple[Any, str]]:
    proc, url = start_api(settings)
    try:
        yield proc, url
    finally:
        stop_api(proc)


def raw_post(url: str, head: str, body: bytes = b"") -> bytes:
    """Send `head` (request line and headers) and `body` on a socket; the response as sent."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            data += part
    return data


def test_a_declared_length_over_the_cap_is_answered_413_without_reading_the_body(
    api: tuple[Any, str]
) -> None:
    _, url = api
    # Given a request that declares 200 MB of JSON and sends none of it, without a key
    head = (f"POST {JOBS} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {200 * MB}\r\n")

    # When it is sent, the answer comes at once (had the server waited for the body, the
    # socket would time out with nothing read)
    answer = raw_post(url, head)

    # Then it is a 413 in the API's error shape
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer[:300]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "payload_too_large" and str(4 * MB) in error["message"]


def test_a_large_body_costs_no_memory_and_no_time(api: tuple[Any, str]) -> None:
    proc, url = api
    assert httpx.post(f"{url}{JOBS}", json={}, timeout=30).status_code == 401  # warm up
    reset_peak_rss(proc.pid)
    base = peak_rss_bytes(proc.pid)

    # When 50 MB of nested lists are sent chunked (no Content-Length), without a key
    started = time.monotonic()
    chunked = httpx.post(f"{url}{JOBS}", content=nested_lists(50 * MB), timeout=120,
                         headers={"Content-Type": "application/json"})
    chunked_s = time.monotonic() - started
    growth = peak_rss_bytes(proc.pid) - base
    print(f"chunked 50 MB: {chunked.status_code} in {chunked_s:.2f} s, "
          f"peak RSS +{growth / MB:.1f} MB")

    # And when 50 MB are sent with their Content-Length
    body = b"".join(nested_lists(50 * MB))
    started = time.monotonic()
    declared = httpx.post(f"{url}{JOBS}", content=body, timeout=120,
                          headers={"Content-Type": "application/json"})
    declared_s = time.monotonic() - started
    growth = peak_rss_bytes(proc.pid) - base
    print(f"declared 50 MB: {declared.status_code} in {declared_s:.2f} s, "
          f"peak RSS +{growth / MB:.1f} MB")

    # Then they are refused before they are parsed, and the process barely grew
    assert_error(chunked, 413, code="payload_too_large")
    assert_error(declared, 413, code="payload_too_large")
    assert growth < 20 * MB, growth
    # And the API still answers
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_bodies_under_the_cap_and_uploads_over_it_are_served(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import get_settings

    # Given a cap of 2,000 bytes
    monkeypatch.setenv("DISTILL_MAX_REQUEST_BODY_BYTES", "2000")
    get_settings.cache_clear()
    auth = make_key(settings, "acme")
    with TestClient(create_app()) as client:
        # A JSON body under it reaches the route (validated there)
        small = client.post(JOBS, headers=auth, json={"teacher": "x"})
        assert_error(small, 422)
        # One over it is refused before it is parsed, key or not
        for headers in (auth, {}):
            big = client.post(JOBS, headers=headers, json={"metadata": {"x": "y" * 3000}})
            assert_error(big, 413, code="payload_too_large")
        # And so is a chunked one (no Content-Length)
        chunked = client.post(JOBS, headers={**auth, "Content-Type": "application/json"},
                              content=iter([b'{"metadata": {"x": "', b"y" * 3000, b'"}}']))
        assert_error(chunked, 413, code="payload_too_large")
        # An upload far larger than the cap goes to its own limit
        rows = [{"text": f"record number {i} " * 5, "label": i % 2} for i in range(200)]
        assert upload_records(client, auth, rows)
