"""A cap on request bodies, enforced before anything reads them (pure ASGI, not
`BaseHTTPMiddleware`, so the body is never buffered on the way).

FastAPI reads and parses a JSON body before it resolves the route's dependencies, so before
the key is checked and before the rate limit: without a cap, anyone can make the event loop parse
a body as large as they like (a 120 MB `[[],[],…]` costs seconds and gigabytes). A declared
`Content-Length` over the cap is answered 413 before the app runs; a body without one (chunked)
is counted as it arrives and refused at the first chunk past the cap, before any parser sees it.
Upload routes, which stream their multipart body to disk under their own larger limit
(`app.files.multipart`), are left to it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.kit.http_errors import error_body

CODE = "payload_too_large"


def too_large_message(limit: int) -> str:
    return (f"The request body is larger than the limit of {limit} bytes (uploads go to "
            "POST /v1/files or /v1/models; the operator sets DISTILL_MAX_REQUEST_BODY_BYTES).")


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the cap; FastAPI lets an
    `HTTPException` from the body through as it is, and the API renders it as its 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))


class BodyLimitMiddleware:
    """413 for a body over `max_bytes()` on any route but the `(method, path)` pairs in `exempt`."""

    def __init__(self, app: ASGIApp, *, max_bytes: Callable[[], int],
                 exempt: Collection[tuple[str, str]] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.exempt:
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # Answered without reading the body; the server closes the connection after it,
            # so the rest of the body is never read either.
            response = JSONResponse(error_body(CODE, too_large_message(limit)), status_code=413,
                                    headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted_receive, send)
