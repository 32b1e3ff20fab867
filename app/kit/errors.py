"""Errors raised by services; the API turns them into the contract's error shape.

Kept free of FastAPI so that the worker can use the same services.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error with an HTTP status, a snake_case code and the field at fault."""

    status_code = 400
    code = "invalid_request"

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


class ServiceUnavailable(ServiceError):
    status_code = 503
    code = "service_unavailable"
