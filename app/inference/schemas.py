"""The wire format of `POST /v1/models/{id}/predict`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from distillation.export.runtimes import Runtime


class PredictRequest(BaseModel):
    inputs: list[str | list[str]] = Field(
        description='Texts, or [text, text_pair] pairs for classifiers: ["great film"].'
    )
    max_new_tokens: int = Field(
        default=32, ge=1, le=512, description="Generated tokens per input (causal-lm, seq2seq)."
    )
    runtime: Runtime | None = Field(
        default=None,
        description="torch, onnx or onnx-int8 (the ONNX ones for models exported to them); "
        "default: the model's default runtime.",
    )


class Classification(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class Generation(BaseModel):
    text: str


class PredictResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    runtime: Runtime = Field(description="The runtime that served the call.")
    data: list[Classification] | list[Generation]
