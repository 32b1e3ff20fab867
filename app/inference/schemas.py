"""The wire format of `POST /v1/models/{id}/predict`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from distillation.data.chat import ROLES
from distillation.export.runtimes import Runtime

# Documents `messages`; the field itself takes any JSON, so that every problem with a turn is a
# 400 naming it (`data.chat.conversation_problem`), as with chat records in files.
CHAT_TURNS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "object", "required": ["role", "content"],
              "properties": {"role": {"type": "string", "enum": list(ROLES)},
                             "content": {"type": "string"}}},
}


class PredictRequest(BaseModel):
    inputs: list[str | list[str]] | None = Field(
        default=None,
        description='Texts, or [text, text_pair] pairs for classifiers: ["great film"].',
    )
    messages: Any = Field(
        default=None, json_schema_extra=CHAT_TURNS_SCHEMA,
        description='Instead of inputs, for chat models (causal-lm with a chat template): one '
        'conversation, ending with the user\'s turn: [{"role": "user", "content": "…"}]. The '
        "answer is the assistant's next turn.",
    )
    stream: bool = Field(
        default=False,
        description="With messages: answer as server-sent events (text/event-stream): `token` "
        "events ({\"text\"}), then `completion` (the response, with usage), then `done`.",
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
