"""One HTTP session to the API: auth header, error bodies turned into exceptions, retries.

Retries (tenacity, exponential backoff with jitter, bounded by `max_retries`):
- 429, 502, 503, 504: always. The server answered without doing the work (rate limit, database
  away for a moment, a proxy with no upstream); `Retry-After` is honoured when present.
- the connection could not be made (refused, connect timeout): always; nothing was sent.
- the connection broke after the request went out (reset, no response, read timeout): only for
  requests that are safe to repeat: GET, DELETE, predict, and a job create that carries an
  Idempotency-Key (the server answers a repeat with the first job). An upload is not repeated:
  the first one may have been stored.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from distill_client.errors import APIConnectionError, APIError, APITimeoutError, error_class

log = logging.getLogger("distill_client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
# The request never left this machine: repeating it cannot do anything twice.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAX_RETRY_AFTER_S = 60.0
USER_AGENT = "distill-client/0.1.0"

RequestBuilder = Callable[[], httpx.Request]


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date (RFC 9110); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def query(**values: Any) -> dict[str, Any]:
    """Query parameters, without the ones left unset."""
    return {k: v for k, v in values.items() if v is not None}


def api_error(response: httpx.Response) -> APIError:
    """The exception for an error response (its body read), in the contract's terms."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    url = str(response.request.url)
    if isinstance(detail, dict):
        code = str(detail.get("code") or "http_error")
        message = str(detail.get("message") or f"HTTP {response.status_code}")
        param = detail.get("param")
    else:  # not the contract's shape: a proxy's page, or not this service at all
        code, param = "http_error", None
        message = f"HTTP {response.status_code} from {url}: {response.text[:200].strip()}"
    return error_class(response.status_code)(
        response.status_code, code, message, None if param is None else str(param), body=body,
        retry_after=parse_retry_after(response.headers.get("Retry-After")), url=url)


class Transport:
    """An `httpx.Client` on the base URL with the key, plus the retry policy above."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float | httpx.Timeout,
                 max_retries: int, backoff: float = 0.5, max_backoff: float = 8.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max(0, max_retries)
        self._backoff = wait_exponential_jitter(initial=backoff, max=max_backoff, jitter=backoff)
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT})

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, idempotent: bool | None = None,
                **kwargs: Any) -> Any:
        """Send a request and return its JSON body; raises an `APIError` for a 4xx/5xx."""
        response = self.send(lambda: self.http.build_request(method, path, **kwargs),
                             idempotent=method in ("GET", "DELETE") if idempotent is None
                             else idempotent)
        return response.json()

    def send(self, build: RequestBuilder, *, idempotent: bool, stream: bool = False
             ) -> httpx.Response:
        """Send the request `build()` makes (a fresh one per attempt, so that an upload is read
        from its start again); a streamed response is the caller's to close."""

        def attempt() -> httpx.Response:
            response = self.http.send(build(), stream=stream)
            if response.status_code >= 400:
                try:
                    response.read()
                finally:
                    response.close()
                raise api_error(response)
            return response

        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1), wait=self._wait,
            retry=retry_if_exception(lambda exc: self._transient(exc, idempotent=idempotent)),
            before_sleep=self._log_retry, reraise=True)
        try:
            return retrying(attempt)
        except httpx.TimeoutException as exc:
            raise APITimeoutError(_url_of(exc, self.base_url), "timed out") from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(_url_of(exc, self.base_url), _reason(exc)) from exc

    @staticmethod
    def _transient(exc: BaseException, *, idempotent: bool) -> bool:
        if isinstance(exc, APIError):
            return exc.status_code in RETRY_STATUSES
        if isinstance(exc, NOT_SENT):
            return True
        return idempotent and isinstance(exc, httpx.TransportError)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, APIError) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER_S)
        return float(self._backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        what = f"HTTP {exc.status_code}" if isinstance(exc, APIError) else _reason(exc)
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s; retrying in %.1f s (attempt %d of %d)", what, wait,
                    state.attempt_number + 1, self.max_retries + 1)


def _url_of(exc: httpx.TransportError, default: str) -> str:
    try:
        return str(exc.request.url)
    except RuntimeError:  # no request attached
        return default


def _reason(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text or type(exc).__name__
