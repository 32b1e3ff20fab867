"""`POST /v1/models/{id}/predict`: run a classifier or a language model on a few inputs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.deps import SessionDep, SettingsDep, TenantDep
from app.inference import service
from app.inference.cache import PredictorCache
from app.inference.schemas import PredictRequest, PredictResponse

router = APIRouter(prefix="/models", tags=["inference"])


async def get_predictors(request: Request, settings: SettingsDep) -> PredictorCache:
    """The app's predictor cache, made on first use with the configured bounds (an async
    dependency: it runs on the event loop, so two first requests cannot both make one)."""
    cache: PredictorCache | None = getattr(request.app.state, "predictors", None)
    if cache is None:
        cache = request.app.state.predictors = PredictorCache(
            max_models=settings.predict_cache_models, max_bytes=settings.predict_cache_bytes)
    return cache


@router.post("/{model_id}/predict", response_model=PredictResponse)
async def predict(
    model_id: str,
    body: PredictRequest,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    cache: Annotated[PredictorCache, Depends(get_predictors)],
) -> PredictResponse:
    """Labels and scores (classifiers) or generated text (causal-lm, seq2seq).

    An async route: requests that wait for a model (loading, or busy with another request) wait
    on the event loop, holding none of the threads that serve the other routes.
    """
    return await service.predict(
        session=session,
        settings=settings,
        tenant_id=tenant.id,
        model_id=model_id,
        inputs=body.inputs,
        max_new_tokens=body.max_new_tokens,
        cache=cache,
    )
