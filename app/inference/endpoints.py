"""`POST /v1/models/{id}/predict`: run a classifier or a language model on a few inputs."""

from __future__ import annotations

import email.message
from functools import partial
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.requests import ClientDisconnect

from app.deps import bearer_scheme, predict_tenant
from app.inference import service
from app.inference.cache import PredictorCache
from app.inference.metrics import count_predict_request, observe_predict_batch, set_loaded_models
from app.inference.schemas import PredictRequest, PredictResponse
from app.inference.stats import BatchLog, BatchStats
from app.inference.stream import answer_events, answer_stream
from app.kit.errors import InvalidRequest, ServiceError, TooManyRequests
from app.kit.ttl_memo import TTLMemo
from app.settings import Settings, get_settings
from distillation.export.predict import ChatStream

router = APIRouter(prefix="/models", tags=["inference"])


def _export_batch(stats: BatchStats) -> None:
    observe_predict_batch(stats.runtime, stats.rows, stats.seconds)


def predictor_cache(settings: Settings) -> PredictorCache:
    """A predictor cache with the configured bounds, batching and threads; its batches are
    logged to a `BatchLog` (`cache.on_batch`) and exported to `/metrics`."""
    return PredictorCache(
        max_models=settings.predict_cache_models, max_bytes=settings.predict_cache_bytes,
        max_batch=settings.predict_max_batch, max_wait_s=settings.predict_max_wait_ms / 1000,
        threads=settings.predict_threads, on_batch=BatchLog(hooks=[_export_batch]),
    )


def _predictors(app_state: Any, settings: Settings) -> PredictorCache:
    """The app's predictor cache, made on first use (on the event loop, so two first requests
    cannot both make one)."""
    cache: PredictorCache | None = getattr(app_state, "predictors", None)
    if cache is None:
        cache = app_state.predictors = predictor_cache(settings)
    return cache


def _model_memo(app_state: Any, settings: Settings) -> service.ModelMemo:
    """(tenant, model id) → the model's record, remembered `DISTILL_LOOKUP_CACHE_S` seconds."""
    memo: service.ModelMemo | None = getattr(app_state, "model_memo", None)
    if memo is None:
        memo = app_state.model_memo = TTLMemo(settings.lookup_cache_s)
    return memo


def _is_json(content_type: str | None) -> bool:
    """Whether a body of this media type is read as JSON (FastAPI's rule for declared bodies:
    application/json or application/*+json; none at all is not)."""
    if content_type is None:
        return False
    if content_type == "application/json":  # nearly every call: no parsing of the header
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json"))


async def read_predict_body(request: Request) -> PredictRequest:
    """The body, parsed and checked in one pass by pydantic-core; a bad one is the same 422 as
    a declared body's (`RequestValidationError`, rendered by `app.kit.http_errors`)."""
    try:
        raw = await request.body()  # under `BodyLimitMiddleware`'s cap: 413 past it
    except ClientDisconnect:
        raise HTTPException(400, "There was an error parsing the body") from None
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",),
                                       "msg": "Field required", "input": None}])
    if not _is_json(request.headers.get("content-type")):
        raise RequestValidationError([{
            "type": "model_attributes_type", "loc": ("body",), "input": None,
            "msg": "Input should be a valid dictionary or object to extract fields from"}])
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])}
             for error in exc.errors(include_url=False)]) from None


# The route reads its own body and key (`read_predict_body`, `predict_tenant`): FastAPI's
# per-call dependency solving and body validation cost more than the rest of the call. So the
# OpenAPI document gets the body and the key from here.
PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": PredictRequest.model_json_schema()}}},
    "security": [{bearer_scheme.scheme_name: []}],
}


@router.post("/{model_id}/predict", response_model=PredictResponse, openapi_extra=PREDICT_OPENAPI,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "The predictions; with `stream`, server-sent "
                              "events of the answer (see docs/serving.md)."}})
async def predict(model_id: str, request: Request) -> Response:
    """Labels and scores (classifiers) or generated text (causal-lm, seq2seq); a chat model's
    answer to `messages`, streamed as server-sent events with `stream`.

    An async route: concurrent calls to one model share a forward pass (see
    `app.inference.batcher`), and a call waiting for its model holds no thread.
    """
    if "\x00" in model_id:  # as `reject_nul_in_url` on every other /v1 route
        raise InvalidRequest("model_id contains a NUL character (%00); no valid value does.",
                             param="model_id")
    settings = get_settings()
    tenant = await predict_tenant(request, settings)
    body = await read_predict_body(request)
    cache = _predictors(request.app.state, settings)
    memo = _model_memo(request.app.state, settings)
    runtime_label = body.runtime or "other"
    stream = ChatStream() if body.stream else None
    try:
        service.check_request(inputs=body.inputs, messages=body.messages, stream=body.stream)
        model, runtime, future = await service.submit(
            settings=settings, tenant_id=tenant.id, model_id=model_id, inputs=body.inputs,
            messages=body.messages, max_new_tokens=body.max_new_tokens, runtime=body.runtime,
            cache=cache, memo=memo, stream=stream)
        if stream is not None:
            return answer_stream(answer_events(
                model=model, used=runtime, future=future, stream=stream, tenant_id=tenant.id,
                memo=memo, on_outcome=partial(count_predict_request, runtime)))
        rows = await service.rows_of(future, model=model, used=runtime, tenant_id=tenant.id,
                                     memo=memo)
    except TooManyRequests:
        count_predict_request(runtime_label, "rejected")
        raise
    except ServiceError:
        count_predict_request(runtime_label, "invalid")
        raise
    except Exception:
        count_predict_request(runtime_label, "error")
        raise
    count_predict_request(runtime, "ok")
    set_loaded_models(len(cache))
    if body.messages is not None:  # the documented row: the answer's text
        rows = [{"text": row["text"]} for row in rows]
    # Rows the predictors made, in the documented shape (`PredictResponse`, which the tests
    # check the answers against): serialised as they are, with no second validation.
    return Response(to_json({"object": "list", "model": model.id, "runtime": runtime,
                             "data": rows}), media_type="application/json")
