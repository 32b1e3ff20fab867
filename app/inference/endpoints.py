"""`POST /v1/models/{id}/predict`: run a classifier or a language model on a few inputs."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from app.deps import CachedTenantDep, CurrentSettingsDep
from app.inference import service
from app.inference.cache import PredictorCache
from app.inference.metrics import count_predict_request, observe_predict_batch, set_loaded_models
from app.inference.schemas import PredictRequest, PredictResponse
from app.inference.stats import BatchLog, BatchStats
from app.inference.stream import answer_events, answer_stream
from app.kit.errors import ServiceError, TooManyRequests
from app.kit.ttl_memo import TTLMemo
from app.settings import Settings
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


async def get_predictors(request: Request, settings: CurrentSettingsDep) -> PredictorCache:
    """The app's predictor cache, made on first use (an async dependency: it runs on the event
    loop, so two first requests cannot both make one)."""
    cache: PredictorCache | None = getattr(request.app.state, "predictors", None)
    if cache is None:
        cache = request.app.state.predictors = predictor_cache(settings)
    return cache


async def get_model_memo(request: Request, settings: CurrentSettingsDep) -> service.ModelMemo:
    """(tenant, model id) → the model's record, remembered `DISTILL_LOOKUP_CACHE_S` seconds."""
    memo: service.ModelMemo | None = getattr(request.app.state, "model_memo", None)
    if memo is None:
        memo = request.app.state.model_memo = TTLMemo(settings.lookup_cache_s)
    return memo


@router.post("/{model_id}/predict", response_model=PredictResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "The predictions; with `stream`, server-sent "
                              "events of the answer (see docs/serving.md)."}})
async def predict(
    model_id: str,
    body: PredictRequest,
    settings: CurrentSettingsDep,
    tenant: CachedTenantDep,
    cache: Annotated[PredictorCache, Depends(get_predictors)],
    memo: Annotated[service.ModelMemo, Depends(get_model_memo)],
) -> Any:
    """Labels and scores (classifiers) or generated text (causal-lm, seq2seq); a chat model's
    answer to `messages`, streamed as server-sent events with `stream`.

    An async route: concurrent calls to one model share a forward pass (see
    `app.inference.batcher`), and a call waiting for its model holds no thread.
    """
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
    # Plain dicts, validated and serialised by the response model: a hand-serialised response
    # saved 6 µs a call (60 µs at 32 inputs) of about 2 ms, not worth skipping the check.
    return {"object": "list", "model": model.id, "runtime": runtime, "data": rows}
