"""Every 4xx/5xx as `{"error": {"code", "message", "param"}}` (the contract's error shape)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.kit.errors import ServiceError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail


# For OpenAPI: what every /v1 route may answer besides its success.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [(400, "Invalid request (the field is in `param`)"),
                         (401, "Missing or unknown API key"),
                         (404, "No such object for this tenant"),
                         (409, "Conflict with the object's state"),
                         (413, "Request body or upload over the size limit"),
                         (422, "Malformed request (the field is in `param`)"),
                         (429, "Over a rate or queue limit (see Retry-After)"),
                         (503, "The database is unavailable for a moment; retry")]
}
# Seconds a client is asked to wait before retrying a request the database could not serve.
RETRY_AFTER_S = 5


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param}}


def _loc_to_param(loc: Sequence[Any]) -> str | None:
    """`("body", "distillation", "losses", 0, "weight")` → `distillation.losses[0].weight`."""
    param = ""
    for part in loc:
        if part in ("body", "query", "path", "header", "form"):
            continue
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or None


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(error_body(exc.code, exc.message, exc.param), status_code=exc.status_code,
                        headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", first["msg"])
        return JSONResponse(error_body("invalid_json", f"The body is not valid JSON: {detail}."),
                            status_code=422)
    param = _loc_to_param(first.get("loc", ()))
    message = "; ".join(
        f"{_loc_to_param(e.get('loc', ())) or 'request'}: {e.get('msg', 'invalid')}"
        for e in errors[:5]
    )
    return JSONResponse(error_body("invalid_request", message, param), status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "invalid_api_key",
             413: "payload_too_large"}
    code = codes.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _data_error(_: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold, such as a NUL character in a text Postgres compares or
    stores (SQLite takes it): the request's fault, so a 400, not a 500. The URL is checked for
    NUL before this (`app.deps.reject_nul_in_url`), so this is the net for bodies and forms."""
    log.warning("request refused by the database: %s", str(getattr(exc, "orig", exc))[:300])
    return JSONResponse(
        error_body("invalid_request",
                   "A value in the request cannot be stored (a NUL character, \\u0000, in a "
                   "text, or a number out of range); remove it and retry."),
        status_code=400,
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database that cannot be reached (restarting, failing over) is a 503 the client may
    retry; any other database error is a bug (500)."""
    assert isinstance(exc, DBAPIError)
    if not (exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))):
        return await _unhandled(request, exc)
    log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else exc)
    return JSONResponse(
        error_body("service_unavailable",
                   "The database is unavailable for a moment; retry the request shortly."),
        status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "Internal server error; the server log has the details."),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unhandled)
