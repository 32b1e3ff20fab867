"""Predictions from a registered or built-in model: labels for classifiers, text for LMs."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from functools import partial

import anyio.to_thread
from sqlalchemy.orm import Session

from app.inference.cache import PredictorCache
from app.inference.schemas import Classification, Generation, PredictResponse
from app.kit.errors import InvalidRequest, Unprocessable
from app.models import service as models
from app.models.views import ModelView
from app.settings import Settings
from distillation.model_info import BASE_TASK
from distillation.predict import Predictor
from distillation.tasks import TASKS

PredictInput = str | list[str]


def _not_servable(model_id: str, reason: str) -> InvalidRequest:
    return InvalidRequest(
        f"Model {model_id} cannot serve predictions: {reason}.",
        param="model_id",
        code="model_not_servable",
    )


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
    for index, item in enumerate(inputs):
        takes_pairs = task in TASKS and TASKS[task].head == "classify"
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


def servable_model(
    *, session: Session, settings: Settings, tenant_id: str, model_id: str,
    inputs: list[PredictInput],
) -> ModelView:
    """The model to run (404 for another tenant's, 400 for a base model), inputs checked."""
    view = models.get_model(session=session, tenant_id=tenant_id, model_id=model_id)
    if view.task == BASE_TASK:
        raise _not_servable(
            model_id,
            "it is a base model with no task head; distil or fine-tune it into a "
            "classifier or language model first",
        )
    if view.task not in TASKS:
        raise _not_servable(model_id, f"its task {view.task!r} has no predict endpoint")
    check_inputs(inputs, task=view.task, settings=settings)
    return view


async def predict(
    *,
    session: Session,
    settings: Settings,
    tenant_id: str,
    model_id: str,
    inputs: list[PredictInput],
    max_new_tokens: int,
    cache: PredictorCache,
) -> PredictResponse:
    """Run the model on `inputs`. The look-up takes a thread of the server's pool for a moment;
    the model runs on its own thread (see `app.inference.cache`); waiting for it holds none."""

    def start() -> tuple[str, Future[list[Classification] | list[Generation]]]:
        view = servable_model(session=session, settings=settings, tenant_id=tenant_id,
                              model_id=model_id, inputs=inputs)
        # Not needed past this point: give the connection back before the model runs.
        session.close()
        call = partial(_run, task=view.task, inputs=inputs, max_new_tokens=max_new_tokens)
        return view.id, cache.submit(view.id, models.local_model_path(settings, view),
                                     view.size_bytes, call)

    served_id, future = await anyio.to_thread.run_sync(start)
    try:
        data = await asyncio.wrap_future(future)
    except ValueError as exc:  # a directory whose head the predictor cannot serve
        raise _not_servable(model_id, str(exc)) from exc
    return PredictResponse(model=served_id, data=data)


def _run(predictor: Predictor, *, task: str, inputs: list[PredictInput], max_new_tokens: int
         ) -> list[Classification] | list[Generation]:
    """Blocking: tokenise and run the model (on the model's own thread)."""
    if TASKS[task].head == "classify":
        return [Classification(**r) for r in predictor.classify(inputs)]
    texts = [item for item in inputs if isinstance(item, str)]
    return [Generation(**r) for r in predictor.generate(texts, max_new_tokens)]
