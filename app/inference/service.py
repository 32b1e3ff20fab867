"""Predictions from a registered or built-in model: labels for classifiers, text for LMs, answers
to a conversation (`messages`) for chat models, streamed when asked (`app.inference.stream`).

The hot path (a known key, a model looked up in the last few seconds, the model loaded) runs on
the event loop without the database or a thread of the server's pool: the look-ups come from
short-lived memos (`DISTILL_LOOKUP_CACHE_S`), the inputs are checked in place, and the call joins
its model's batcher, whose thread runs the forward pass (`app.inference.batcher`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from app.inference.batcher import Conversation, PredictInput, Rows
from app.inference.cache import PredictorCache
from app.kit.db import session_factory
from app.kit.errors import InvalidRequest, NotFound, Unprocessable
from app.kit.ttl_memo import TTLMemo
from app.models import service as models
from app.settings import Settings
from app.storage.local import dir_mtime_ns
from distillation.data.chat import conversation_problem
from distillation.export.predict import ChatStream
from distillation.export.runtimes import (
    Runtime,
    RuntimeUnavailable,
    available_runtimes,
    default_runtime,
)
from distillation.models.files import UnsafeModel, has_chat_template
from distillation.models.info import BASE_TASK, CAUSAL_LM
from distillation.tasks import TASKS


@dataclass(frozen=True)
class ServedModel:
    """What predict needs of a model, kept in the model memo for a few seconds."""

    id: str
    task: str
    path: Path
    size_bytes: int
    runtimes: tuple[Runtime, ...]
    default_runtime: Runtime
    stamp: int  # the directory's dir_mtime_ns when it was looked up (a changed one reloads)
    chat: bool = False  # a causal LM whose tokenizer has a chat template: it answers `messages`

    @property
    def classifies(self) -> bool:
        return TASKS[self.task].head == "classify"


ModelMemo = TTLMemo[tuple[str, str], ServedModel]


def _not_servable(model_id: str, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"Model {model_id} cannot serve predictions: {reason}.",
        param="model_id",
        code="model_not_servable",
    )


def _files_missing(model_id: str) -> NotFound:
    return NotFound(f"The files of model {model_id} are missing on the server.",
                    param="model_id", code="model_files_missing")


def check_inputs(inputs: list[PredictInput], *, task: str, settings: Settings) -> None:
    """Reject empty or ill-shaped inputs (400) and inputs over the configured limits (422),
    naming `inputs` or the input at fault."""
    if not inputs:
        raise InvalidRequest("inputs is empty: send at least one text.", param="inputs")
    if len(inputs) > settings.predict_max_inputs:
        raise Unprocessable(
            f"inputs holds {len(inputs)} items; the limit is {settings.predict_max_inputs} "
            "per request (DISTILL_PREDICT_MAX_INPUTS): split them across calls.",
            param="inputs", code="too_many_inputs",
        )
    takes_pairs = task in TASKS and TASKS[task].head == "classify"
    for index, item in enumerate(inputs):
        if isinstance(item, list) and (not takes_pairs or len(item) != 2):
            shape = "[text, text_pair] pairs" if takes_pairs else "no pairs"
            raise InvalidRequest(
                f"inputs[{index}]: expected a text ({task} models take {shape}).",
                param="inputs",
            )
        texts = item if isinstance(item, list) else [item]
        for part, text in enumerate(texts):
            if len(text) > settings.predict_max_chars:
                param = f"inputs[{index}][{part}]" if isinstance(item, list) else f"inputs[{index}]"
                raise Unprocessable(
                    f"{param} has {len(text)} characters; the limit is "
                    f"{settings.predict_max_chars} (DISTILL_PREDICT_MAX_CHARS).",
                    param=param, code="input_too_long",
                )


def find_servable_model(*, settings: Settings, tenant_id: str, model_id: str) -> ServedModel:
    """Blocking (database, files): the model to run, 404 for another tenant's, 400 for a base
    model or a task with no predict head."""
    session = session_factory(settings.sqlalchemy_url)()
    try:
        view = models.get_model(session=session, tenant_id=tenant_id, model_id=model_id)
    finally:
        session.rollback()
        session.close()
    if view.task == BASE_TASK:
        raise _not_servable(
            model_id,
            "it is a base model with no task head; distil or fine-tune it into a "
            "classifier or language model first",
        )
    if view.task not in TASKS:
        raise _not_servable(model_id, f"its task {view.task!r} has no predict endpoint")
    # With a remote store, the model's copy in this process's scratch cache (pulled once).
    path = models.local_model_path(settings, view)
    if not path.is_dir():
        raise _files_missing(model_id)
    return ServedModel(id=view.id, task=view.task, path=path, size_bytes=view.size_bytes,
                       runtimes=tuple(available_runtimes(path)),
                       default_runtime=default_runtime(path), stamp=dir_mtime_ns(path),
                       chat=view.task == CAUSAL_LM and _has_chat_template(path))


def _has_chat_template(path: Path) -> bool:
    try:
        return has_chat_template(path)
    except UnsafeModel:  # an unreadable tokenizer config: no template the server can vouch for
        return False


def check_request(*, inputs: list[PredictInput] | None, messages: object, stream: bool) -> None:
    """Texts (`inputs`) or one conversation (`messages`), not both; `stream` with `messages`."""
    if inputs is not None and messages is not None:
        raise InvalidRequest("Send inputs (texts) or messages (a conversation), not both.",
                             param="messages")
    if inputs is None and messages is None:  # as the schema's own "field required"
        raise Unprocessable("Send inputs (a list of texts) or, to a chat model, messages (a "
                             'conversation: [{"role": "user", "content": "…"}]).',
                             param="inputs")
    if stream and messages is None:
        raise InvalidRequest("stream answers a conversation: send messages with it, or inputs "
                             "without it.", param="stream")


def check_messages(messages: object, *, model: ServedModel, settings: Settings) -> Conversation:
    """The conversation to answer (400 naming the turn at fault; 422 over the size limit), for a
    chat model (400 `no_chat_template` otherwise)."""
    if not model.chat:
        what = ("its tokenizer has no chat template" if model.task == CAUSAL_LM
                else f"it is a {model.task} model, not a causal-lm chat model")
        raise InvalidRequest(f"Model {model.id} cannot answer messages: {what}. Send inputs "
                             "(prompts) instead.", param="messages", code="no_chat_template")
    problem = conversation_problem(messages, answerable=True)
    if problem is not None:
        raise InvalidRequest(f"{problem.message}.", param=problem.where, code="invalid_messages")
    assert isinstance(messages, list)
    chars = sum(len(turn["content"]) for turn in messages)
    if chars > settings.predict_max_chars:
        raise Unprocessable(
            f"messages hold {chars} characters; the limit is {settings.predict_max_chars} "
            "(DISTILL_PREDICT_MAX_CHARS).", param="messages", code="input_too_long")
    return [{"role": turn["role"], "content": turn["content"]} for turn in messages]


def choose_runtime(model: ServedModel, asked: Runtime | None) -> Runtime:
    """The runtime asked for (400 naming `runtime` when the model has no files for it), or the
    model's default."""
    if asked is None:
        return model.default_runtime
    if asked not in model.runtimes:
        raise InvalidRequest(
            f"Model {model.id} has no {asked} export; it can run in: {', '.join(model.runtimes)}.",
            param="runtime", code="runtime_unavailable",
        )
    return asked


async def predict(
    *,
    settings: Settings,
    tenant_id: str,
    model_id: str,
    inputs: list[PredictInput] | None,
    max_new_tokens: int,
    runtime: Runtime | None,
    cache: PredictorCache,
    memo: ModelMemo,
    messages: object = None,
) -> tuple[ServedModel, Runtime, Rows]:
    """Run the model on `inputs`, or have it answer `messages`: (the model, the runtime used,
    one row per input; one row for the conversation)."""
    model, used, future = await submit(
        settings=settings, tenant_id=tenant_id, model_id=model_id, inputs=inputs,
        messages=messages, max_new_tokens=max_new_tokens, runtime=runtime, cache=cache,
        memo=memo)
    rows = await rows_of(future, model=model, used=used, tenant_id=tenant_id, memo=memo)
    return model, used, rows


async def submit(
    *,
    settings: Settings,
    tenant_id: str,
    model_id: str,
    inputs: list[PredictInput] | None,
    max_new_tokens: int,
    runtime: Runtime | None,
    cache: PredictorCache,
    memo: ModelMemo,
    messages: object = None,
    stream: ChatStream | None = None,
) -> tuple[ServedModel, Runtime, Future[Rows]]:
    """Check the call and queue it on its model (`stream`: the answer to `messages`, as it
    comes): (the model, the runtime, the future of its rows)."""
    model = await memo.get_or_load((tenant_id, model_id), partial(
        find_servable_model, settings=settings, tenant_id=tenant_id, model_id=model_id))
    call: dict[str, Any]
    if messages is not None:
        conversation = check_messages(messages, model=model, settings=settings)
        call = {"inputs": [conversation], "chat": True, "stream": stream}
    else:
        assert inputs is not None
        check_inputs(inputs, task=model.task, settings=settings)
        call = {"inputs": inputs, "generate": not model.classifies}
    used = choose_runtime(model, runtime)
    try:
        future = cache.submit(model.id, used, model.path, model.size_bytes,
                              max_new_tokens=max_new_tokens, stamp=model.stamp, **call)
    except FileNotFoundError as exc:  # deleted since it was looked up
        memo.discard((tenant_id, model_id))
        raise _files_missing(model_id) from exc
    return model, used, future


async def rows_of(future: Future[Rows], *, model: ServedModel, used: Runtime, tenant_id: str,
                  memo: ModelMemo) -> Rows:
    """The call's rows, once its batch has run; its failure as the error the caller gets."""
    try:
        return await asyncio.wrap_future(future)
    except FileNotFoundError as exc:  # deleted since it was looked up, before it loaded
        memo.discard((tenant_id, model.id))
        raise _files_missing(model.id) from exc
    except RuntimeUnavailable as exc:  # its files went between the look-up and the load
        memo.discard((tenant_id, model.id))
        raise InvalidRequest(f"Model {model.id} cannot run in {used}: {exc}.", param="runtime",
                             code="runtime_unavailable") from exc
    except ValueError as exc:  # a directory whose head the predictor cannot serve
        raise _not_servable(model.id, str(exc)) from exc
