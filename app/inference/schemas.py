"""The wire format of `POST /v1/models/{id}/predict`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    inputs: list[str | list[str]] = Field(
        description='Texts, or [text, text_pair] pairs for classifiers: ["great film"].'
    )
    max_new_tokens: int = Field(
        default=32, ge=1, le=512, description="Generated tokens per input (causal-lm, seq2seq)."
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
    data: list[Classification] | list[Generation]
