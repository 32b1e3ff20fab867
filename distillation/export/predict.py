"""Inference on an exported model directory, through its task's predict head: labels and scores
for classifiers, text for language models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distillation.models.info import BASE_TASK, inspect_model, max_input_length
from distillation.models.loading import load_model, load_tokenizer
from distillation.tasks import get_task, tasks_with_head

ClassifyInput = str | tuple[str, str] | list[str]


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
