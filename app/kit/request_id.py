"""`X-Request-ID`: taken from the client when it is a sane token, made up otherwise, echoed in
the response, and put on every log line written while the request is served."""

from __future__ import annotations

import itertools
import os
import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.logs import RequestContext, current_request

HEADER = "X-Request-ID"
# A client's id is logged as it is: short, and nothing that could forge or break a log line.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


# New ids: a random prefix drawn once per process, then a counter (32 hex digits in all). Unique
# across processes and restarts without a system call per request: `uuid4` reads the OS's random
# source each time, and that call hands the GIL to a busy model thread and waits to get it back.
_counter = itertools.count()
_prefix = {"pid": -1, "hex": ""}


def _new_id() -> str:
    if _prefix["pid"] != os.getpid():  # a forked child draws its own prefix
        _prefix.update(pid=os.getpid(), hex=secrets.token_hex(8))
    return f"{_prefix['hex']}{next(_counter):016x}"


def request_id_from(value: str | None) -> str:
    """The client's id if it is acceptable, else a new one (32 hex digits)."""
    if value is not None and _ACCEPTED.fullmatch(value):
        return value
    return _new_id()


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
