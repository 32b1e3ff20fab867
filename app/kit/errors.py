"""Errors raised by services; the API turns them into the contract's error shape.

Kept free of FastAPI so that the worker can use the same services.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error with an HTTP status, a snake_case code and the field at fault."""

    status_code = 400
    code = "invalid_request"
    # Response headers the error carries (Retry-After on a 429).
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ServiceError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "invalid_api_key"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class Unprocessable(ServiceError):
    """A well-formed request over a configured limit (422, like the schema's own checks)."""

    status_code = 422
    code = "invalid_request"


class TooManyRequests(ServiceError):
    """429; `retry_after_s`, when known, becomes the Retry-After header."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message, param=param, code=code)
        if retry_after_s is not None:
            self.headers = {"Retry-After": str(retry_after_s)}


class ServiceUnavailable(ServiceError):
    status_code = 503
    code = "service_unavailable"
