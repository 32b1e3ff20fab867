"""The client's exceptions: one per kind of failure a caller handles differently.

`APIError` carries the contract's error body (`code`, `message`, `param`) and the HTTP status;
its subclasses let a caller catch "not found" or "rate limited" without comparing numbers.
`APIConnectionError` is the server that could not be reached (it names the URL tried), so that a
typo in the base URL reads differently from a request the server refused.
"""

from __future__ import annotations

from typing import Any


class DistillError(Exception):
    """Base class of everything this package raises on purpose."""


class MissingAPIKeyError(DistillError):
    """No API key was given and `DISTILL_API_KEY` is not set."""

    def __init__(self) -> None:
        super().__init__(
            "No API key. Pass api_key=… or set DISTILL_API_KEY (the CLI also takes --api-key); "
            "an operator creates one with `distill keys create --tenant NAME`.")


class APIConnectionError(DistillError):
    """The server could not be reached (refused, reset, DNS, TLS), after the retries."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"Cannot reach the distill API at {url} ({reason}).")


class APITimeoutError(APIConnectionError):
    """The server took longer than the client's timeout to answer."""


class APIError(DistillError):
    """The server answered with an error (4xx/5xx) in the contract's shape."""

    def __init__(self, status_code: int, code: str, message: str, param: str | None = None, *,
                 body: Any = None, retry_after: float | None = None, url: str = "") -> None:
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param
        self.body = body
        self.retry_after = retry_after
        self.url = url
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (field: {self.param})" if self.param else ""
        return f"{self.message}{where} [{self.code}, HTTP {self.status_code}]"


class BadRequestError(APIError):
    """400: the request is wrong; `param` names the field (a file's message names the line)."""


class AuthenticationError(APIError):
    """401: the API key is missing, unknown or revoked."""


class NotFoundError(APIError):
    """404: no such object for this tenant (another tenant's id reads the same)."""


class ConflictError(APIError):
    """409: the object's state forbids it (cancel a finished job, delete a file in use, …)."""


class PayloadTooLargeError(APIError):
    """413: the upload is over the server's size limit."""


class UnprocessableEntityError(APIError):
    """422: the body does not match the schema; `param` is the field's path."""


class RateLimitError(APIError):
    """429: over a rate or queue limit; `retry_after` says how long the server asks to wait."""


class InternalServerError(APIError):
    """5xx: the server failed (503 is retried first: the database was away for a moment)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError, 401: AuthenticationError, 404: NotFoundError, 409: ConflictError,
    413: PayloadTooLargeError, 422: UnprocessableEntityError, 429: RateLimitError,
}


def error_class(status_code: int) -> type[APIError]:
    """The exception class for an HTTP error status."""
    if status_code >= 500:
        return InternalServerError
    return _BY_STATUS.get(status_code, APIError)
