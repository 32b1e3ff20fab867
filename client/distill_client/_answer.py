"""A chat model's answer as it is written: `models.predict(…, messages=…, stream=True)`.

The server sends `token` events (`{"text": "…"}`, pieces that join into the answer), then
`completion` (the response the call without `stream` gets, plus `usage`), then `done`; a failure
once the answer has begun is an `error` event with the API's error body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import TracebackType

import httpx
from httpx_sse import EventSource

from distill_client.errors import APIConnectionError, APIError
from distill_client.types import Predictions


class AnswerStream:
    """Iterate for the answer's text pieces as they come; once they are all read, `result` holds
    the whole response (its `usage` too) and `text` the answer. An `error` event raises
    `APIError` (its `code`, e.g. `generation_failed`; `status_code` is the stream's 200). Close
    it (or use it as a context manager) to stop reading early: the server then stops generating."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._pieces: list[str] = []
        self.result: Predictions | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for sse in EventSource(self._response).iter_sse():
                if sse.event == "token":
                    piece = str(json.loads(sse.data)["text"])
                    self._pieces.append(piece)
                    yield piece
                elif sse.event == "completion":
                    self.result = Predictions.model_validate_json(sse.data)
                elif sse.event == "error":
                    body = json.loads(sse.data)
                    detail = body.get("error") or {}
                    raise APIError(self._response.status_code, str(detail.get("code")),
                                   str(detail.get("message")), detail.get("param"), body=body,
                                   url=str(self._response.request.url))
                elif sse.event == "done":
                    return
        except httpx.TransportError as exc:
            raise APIConnectionError(str(self._response.request.url),
                                     str(exc) or type(exc).__name__) from exc
        finally:
            self._response.close()

    @property
    def text(self) -> str:
        """The answer so far (all of it once the stream has ended)."""
        return "".join(self._pieces)

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
