"""Inference on an exported model directory, through its task's predict head: labels and scores
for classifiers, text for language models, answers to conversations for chat models (a causal LM
whose tokenizer has a chat template), streamed token by token when asked."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from distillation.data.chat import Message
from distillation.data.chat_template import render
from distillation.models.info import BASE_TASK, CAUSAL_LM, inspect_model, max_input_length
from distillation.models.loading import load_model, load_tokenizer
from distillation.tasks import get_task, tasks_with_head
from distillation.training.generation import left_padded, pad_id_of

ClassifyInput = str | tuple[str, str] | list[str]
# How long a streamed answer's reader waits for the next piece of text before giving up: far
# longer than a token takes, so only a stuck model trips it.
STREAM_TIMEOUT_S = 120.0


class ChatStream:
    """One streamed answer, between the thread that generates it and the reader of its text: the
    generating thread hands over the streamer of text pieces (`started`) as generation begins,
    and ends it however generation ends; `cancel()` (the reader went away) stops generation at
    the next token."""

    def __init__(self) -> None:
        self.started: Future[TextIteratorStreamer] = Future()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class _StopWhenCancelled(StoppingCriteria):
    def __init__(self, stream: ChatStream) -> None:
        self.stream = stream

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                 **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.stream.cancelled,  # type: ignore[return-value]
                          dtype=torch.bool, device=input_ids.device)


class Predictor:
    """A loaded model directory, ready for `classify` or `generate` (whichever its task serves)."""

    def __init__(
        self,
        *,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        task: str,
        device: str = "cpu",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self.spec = get_task(task)
        self.device = torch.device(device)
        self.labels: list[str] | None = None
        if self.spec.labelled:
            id2label: dict[Any, Any] = dict(model.config.id2label or {})
            self.labels = [str(id2label[i]) for i in sorted(id2label, key=int)]
        self.max_length = max_input_length(model.config, tokenizer)

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu") -> Predictor:
        """Load a Hugging Face directory; ValueError when it is a base model with no task head."""
        info = inspect_model(model_dir)
        if info.task == BASE_TASK:
            raise ValueError(
                f"{model_dir} has no task head (a base {info.model_type} model): "
                "fine-tune or distil it into a classifier or language model first"
            )
        model = load_model(get_task(info.task).model_class, model_dir)
        tokenizer = load_tokenizer(model_dir)
        model.to(torch.device(device)).eval()  # type: ignore[arg-type]
        return cls(model=model, tokenizer=tokenizer, task=info.task, device=device)

    def _require(self, head: str) -> None:
        if self.spec.head != head:
            tasks = tasks_with_head(head)
            raise ValueError(f"{head} needs a {' or '.join(tasks)} model, this one is {self.task}")

    def classify(self, inputs: Sequence[ClassifyInput]) -> list[dict[str, Any]]:
        """[{"label", "score", "scores": {label: probability}}] for each text or text pair."""
        self._require("classify")
        assert self.labels is not None
        return self.spec.classify(self.model, self.tokenizer, self.labels, inputs,
                                  max_length=self.max_length, device=self.device)

    def generate(self, inputs: Sequence[str], max_new_tokens: int) -> list[dict[str, Any]]:
        """[{"text"}] for each prompt: greedy decoding, the continuation only for causal LMs."""
        self._require("generate")
        return self.spec.generate(self.model, self.tokenizer, inputs,
                                  max_new_tokens=max_new_tokens, max_length=self.max_length,
                                  device=self.device)

    def chat(self, conversations: Sequence[Sequence[Message]], max_new_tokens: int, *,
             stream: ChatStream | None = None) -> list[dict[str, Any]]:
        """[{"text", "usage": {"prompt_tokens", "completion_tokens"}}] for each conversation
        (checked: `data.chat.conversation_problem(..., answerable=True)`): the chat template with
        the generation prompt, then greedy decoding of the answer. `stream` (one conversation):
        its text as it is generated. ValueError when the model is no chat model."""
        self._require("generate")
        if self.task != CAUSAL_LM or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("messages need a causal-lm model whose tokenizer has a chat template")
        if stream is not None and len(conversations) != 1:
            raise ValueError("a streamed answer is one conversation's")
        tokenizer, budget = self.tokenizer, max(1, self.max_length - max_new_tokens)
        prompts = [tokenizer(render(tokenizer, conversation, generation_prompt=True),
                             add_special_tokens=False)["input_ids"][-budget:]
                   for conversation in conversations]
        pad = pad_id_of(tokenizer)
        ids, mask = (t.to(self.device) for t in left_padded(prompts, pad))
        width = ids.shape[1]
        kwargs: dict[str, Any] = {}
        streamer = None
        if stream is not None:
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=STREAM_TIMEOUT_S,
                                            skip_special_tokens=True)
            kwargs = {"streamer": streamer,
                      "stopping_criteria": StoppingCriteriaList([_StopWhenCancelled(stream)])}
            stream.started.set_result(streamer)
        try:
            with torch.inference_mode():
                generated = self.model.generate(  # type: ignore[operator]
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                    do_sample=False, use_cache=True, pad_token_id=pad, **kwargs)
        except BaseException:
            if streamer is not None:
                streamer.end()  # the reader sees the text end, then the call's error
            raise
        stops = _eos_ids(self.model, tokenizer)
        rows = []
        for prompt, row in zip(prompts, generated[:, width:].tolist(), strict=True):
            ends = [i for i, token in enumerate(row) if token in stops]
            answer = row[: ends[0] + 1] if ends else row
            rows.append({"text": tokenizer.decode(answer, skip_special_tokens=True),
                         "usage": {"prompt_tokens": len(prompt),
                                   "completion_tokens": len(answer)}})
        return rows


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokens that end generation (the generation config's, else the tokenizer's)."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else ({int(eos)} if eos is not None else set())
