"""`POST /v1/models/{id}/predict`: run a classifier or a language model on a few inputs."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import SessionDep, SettingsDep, TenantDep
from app.inference import service
from app.inference.schemas import PredictRequest, PredictResponse

router = APIRouter(prefix="/models", tags=["inference"])


@router.post("/{model_id}/predict", response_model=PredictResponse)
def predict(
    model_id: str,
    body: PredictRequest,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
) -> PredictResponse:
    """Labels and scores (classifiers) or generated text (causal-lm, seq2seq).

    A plain `def`: FastAPI runs it in a worker thread, off the event loop, while the model runs.
    """
    return service.predict(
        session=session,
        settings=settings,
        tenant_id=tenant.id,
        model_id=model_id,
        inputs=body.inputs,
        max_new_tokens=body.max_new_tokens,
    )
