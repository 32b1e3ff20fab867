"""`client.models`: the registry (built-in, uploaded, distilled), downloads and predictions."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, overload

import httpx

from distill_client._answer import AnswerStream
from distill_client._archive import pack_folder, prepare_destination, staging_dir, unpack
from distill_client._http import Transport
from distill_client.errors import APIConnectionError
from distill_client.types import Deleted, Model, Page, Predictions

DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, read=300.0)


class Models:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def list(self) -> Page[Model]:
        """The built-in models and the tenant's uploaded and distilled ones."""
        return Page[Model].model_validate(self._t.request("GET", "/v1/models"))

    def get(self, model_id: str) -> Model:
        """A model, with its report (teacher vs student) for a distilled one."""
        return Model.model_validate(self._t.request("GET", f"/v1/models/{model_id}"))

    def delete(self, model_id: str) -> Deleted:
        """Delete one of the tenant's models (`ConflictError` for a built-in one)."""
        return Deleted.model_validate(self._t.request("DELETE", f"/v1/models/{model_id}"))

    def register(self, source: str | os.PathLike[str] | IO[bytes]) -> Model:
        """Register a teacher: a Hugging Face model folder (packed here), a .tar.gz of one, or
        a binary file object of a .tar.gz. Safetensors weights only; the server refuses
        pickles, code and escaping paths (`BadRequestError`)."""
        with contextlib.ExitStack() as stack:
            handle: IO[bytes]
            if isinstance(source, str | os.PathLike):
                path = Path(source)
                if path.is_dir():
                    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                    path = pack_folder(path, scratch / f"{path.name}.tar.gz")
                name, handle = path.name, stack.enter_context(path.open("rb"))
            else:
                name, handle = getattr(source, "name", "model.tar.gz"), source
            build = functools.partial(_upload_request, self._t, Path(str(name)).name, handle)
            response = self._t.send(build, idempotent=False)
        return Model.model_validate(response.json())

    def download(self, model_id: str, dir: str | os.PathLike[str], *, format: str = "hf"
                 ) -> Path:
        """Download the model into the folder `dir` (new, or empty) and return the folder that
        `AutoModelFor….from_pretrained` loads. `format`: `hf`, `onnx` or `onnx-int8`.

        The archive is written to disk as it arrives (never held in memory) and unpacked with
        no links and nothing outside `dir`; an interrupted download leaves `dir` untouched.
        """
        dest = Path(dir).expanduser().resolve()
        prepare_destination(dest)
        with staging_dir(dest) as scratch:
            archive = scratch / "model.tar.gz"
            response = self._t.send(functools.partial(
                self._t.http.build_request, "GET", f"/v1/models/{model_id}/download",
                params={"format": format}, timeout=DOWNLOAD_TIMEOUT), idempotent=True, stream=True)
            try:
                with archive.open("wb") as out:
                    for chunk in response.iter_bytes():  # as received: a network read each
                        out.write(chunk)
            except httpx.TransportError as exc:
                raise APIConnectionError(str(response.request.url),
                                         f"download interrupted: {exc}") from exc
            finally:
                response.close()
            return unpack(archive, dest, scratch)

    @overload
    def predict(self, model_id: str, inputs: Sequence[str | Sequence[str]] | None = None, *,
                messages: Sequence[Mapping[str, str]] | None = None, runtime: str | None = None,
                max_new_tokens: int | None = None, stream: Literal[False] = False
                ) -> Predictions: ...

    @overload
    def predict(self, model_id: str, inputs: None = None, *,
                messages: Sequence[Mapping[str, str]], runtime: str | None = None,
                max_new_tokens: int | None = None, stream: Literal[True]) -> AnswerStream: ...

    def predict(self, model_id: str, inputs: Sequence[str | Sequence[str]] | None = None, *,
                messages: Sequence[Mapping[str, str]] | None = None, runtime: str | None = None,
                max_new_tokens: int | None = None, stream: bool = False
                ) -> Predictions | AnswerStream:
        """Labels and scores (classifiers; an input may be a [text, text_pair] pair) or
        generated text (causal-lm, seq2seq). `runtime`: `torch`, `onnx` or `onnx-int8`.

        `messages` instead of `inputs`, for chat models: one conversation
        (`[{"role": "user", "content": "…"}]`, ending with the user's turn), answered as one
        prediction; with `stream=True`, an `AnswerStream` of the answer's text as it is written.
        """
        body: dict[str, Any] = {}
        if inputs is not None:
            body["inputs"] = [x if isinstance(x, str) else list(x) for x in inputs]
        if messages is not None:
            body["messages"] = [dict(turn) for turn in messages]
        if runtime is not None:
            body["runtime"] = runtime
        if max_new_tokens is not None:
            body["max_new_tokens"] = max_new_tokens
        path = f"/v1/models/{model_id}/predict"
        if not stream:
            return Predictions.model_validate(self._t.request("POST", path, json=body,
                                                              idempotent=True))
        body["stream"] = True
        response = self._t.send(
            functools.partial(self._t.http.build_request, "POST", path, json=body,
                              headers={"Accept": "text/event-stream"}),
            idempotent=True, stream=True)
        return AnswerStream(response)


def _upload_request(transport: Transport, name: str, handle: IO[bytes]) -> httpx.Request:
    if handle.seekable():
        handle.seek(0)
    return transport.http.build_request("POST", "/v1/models",
                                        files={"file": (name, handle, "application/gzip")})
