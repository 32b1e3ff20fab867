"""`Client`: the entry point, one HTTP session shared by `files`, `jobs` and `models`."""

from __future__ import annotations

import os
from types import TracebackType

import httpx

from distill_client._http import Transport
from distill_client.errors import MissingAPIKeyError
from distill_client.files import Files
from distill_client.jobs import Jobs
from distill_client.models import Models

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class Client:
    """A client of the distill API.

    `base_url` and `api_key` default to `DISTILL_API_URL` (else http://127.0.0.1:8000) and
    `DISTILL_API_KEY`. `timeout` bounds each request (seconds; downloads and event streams
    allow longer reads); `max_retries` bounds the retries of transient failures (see
    `distill_client._http`). Use it as a context manager, or call `close()`.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float | httpx.Timeout = 60.0, max_retries: int = 3) -> None:
        base_url = base_url or os.environ.get("DISTILL_API_URL") or DEFAULT_BASE_URL
        api_key = api_key or os.environ.get("DISTILL_API_KEY")
        if not api_key:
            raise MissingAPIKeyError()
        self.base_url = base_url.rstrip("/")
        self._transport = Transport(self.base_url, api_key, timeout=timeout,
                                    max_retries=max_retries)
        self.files = Files(self._transport)
        self.jobs = Jobs(self._transport)
        self.models = Models(self._transport)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"  # never the key
