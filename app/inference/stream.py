"""A chat model's answer as server-sent events (`POST /v1/models/{id}/predict` with `"stream":
true`).

The wire format: one `token` event per piece of text as the model writes it (`{"text": "…"}`;
pieces join into the answer), then `completion` with the whole response as the call without
`stream` answers it plus `usage` (`{"prompt_tokens", "completion_tokens"}`), then `done`
(`[DONE]`). A failure once the stream has begun is an `error` event with the API's error body
(`{"error": {"code", "message", "param"}}`), and the stream ends. Everything that can be refused
before the model runs (an unknown model, a bad message, a model with no chat template) is refused
before the stream starts, as a plain JSON error.

The answer is generated on its model's thread (`app.inference.batcher`), which hands over a
`TextIteratorStreamer`; the pieces are read from it off the event loop. A client that goes away
cancels the generator (sse-starlette watches for the disconnect), which stops generation at the
next token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from app.inference.batcher import Rows
from app.inference.service import ModelMemo, ServedModel, rows_of
from app.kit.errors import ServiceError
from app.kit.http_errors import error_body
from distillation.export.predict import ChatStream
from distillation.export.runtimes import Runtime

SEP = "\n"  # as the job events' stream: the separator every SSE parser accepts


def _event(data: Any, event: str) -> ServerSentEvent:
    return ServerSentEvent(data if isinstance(data, str) else json.dumps(data), event=event,
                           sep=SEP)


async def _pieces(streamer: Any) -> AsyncIterator[str]:
    """The streamer's text pieces, each read in a thread (the read blocks until the model has
    written more)."""
    pieces = iter(streamer)
    while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
        if piece:
            yield piece


async def answer_events(
    *, model: ServedModel, used: Runtime, future: Future[Rows], stream: ChatStream,
    tenant_id: str, memo: ModelMemo, on_outcome: Callable[[str], None],
) -> AsyncIterator[ServerSentEvent]:
    """The events of one streamed answer (see the module notes); `on_outcome` hears how it
    ended: "ok", "invalid" (the service's error) or "error"."""
    started: asyncio.Future[Any] = asyncio.wrap_future(stream.started)
    finished: asyncio.Future[Any] = asyncio.wrap_future(future)
    try:
        await asyncio.wait({started, finished}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():  # else the call failed (or was refused) before generating
            async for piece in _pieces(started.result()):
                yield _event({"text": piece}, "token")
        rows = await rows_of(future, model=model, used=used, tenant_id=tenant_id, memo=memo)
        row = rows[0]
        yield _event({"object": "list", "model": model.id, "runtime": used,
                      "data": [{"text": row["text"]}], "usage": row["usage"]}, "completion")
        yield _event("[DONE]", "done")
        on_outcome("ok")
    except ServiceError as exc:
        on_outcome("invalid")
        yield _event(error_body(exc.code, exc.message, exc.param), "error")
    except Exception as exc:  # the model failed mid-answer: said on the stream, which then ends
        on_outcome("error")
        message = f"The answer failed while it was generated: {type(exc).__name__}: {exc}"
        yield _event(error_body("generation_failed", message[:500]), "error")
    finally:
        stream.cancel()  # a reader gone mid-answer: generation stops at the next token
        future.cancel()
        for waiter in (started, finished):  # `rows_of` reported the outcome: these need not
            if waiter.done() and not waiter.cancelled():
                waiter.exception()
            else:
                waiter.cancel()


def answer_stream(events: AsyncIterator[ServerSentEvent]) -> EventSourceResponse:
    """`text/event-stream` of `answer_events`."""
    return EventSourceResponse(events, sep=SEP)
