"""`X-Request-ID`: taken from the client when it is a sane token, made up otherwise, echoed in
the response, and put on every log line written while the request is served."""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.logs import RequestContext, current_request

HEADER = "X-Request-ID"
# A client's id is logged as it is: short, and nothing that could forge or break a log line.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id_from(value: str | None) -> str:
    """The client's id if it is acceptable, else a new one (32 hex digits)."""
    if value is not None and _ACCEPTED.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """A pure ASGI middleware (not `BaseHTTPMiddleware`): the app and uvicorn's access log line,
    written when the response starts, run in this task and so see the request's context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v.decode("latin-1") for k, v in scope["headers"]
                     if k == HEADER.lower().encode()), None)
        request = RequestContext(request_id=request_id_from(sent), scope=scope)
        token = current_request.set(request)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request.request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request.reset(token)
