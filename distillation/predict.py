"""Inference on an exported model directory: labels and scores for classifiers, text for LMs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distillation.inspect import BASE_TASK, inspect_model

ClassifyInput = str | tuple[str, str] | list[str]
MAX_LENGTH = 512
BATCH_SIZE = 32
# Models whose position ids start after the padding index, so two positions are unusable.
_OFFSET_POSITIONS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


def max_input_length(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the model takes: the tokenizer's and the position table's limit, ≤ 512."""
    limit = MAX_LENGTH
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < limit:
        limit = tok_max
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        positions -= _OFFSET_POSITIONS.get(str(config.model_type), 0)
        limit = min(limit, positions)
    return limit


def _as_pair(item: ClassifyInput) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    if isinstance(item, (tuple, list)) and len(item) == 1 and isinstance(item[0], str):
        return item[0], None
    raise ValueError("each input must be a text or a pair [text, text_pair]")


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
        self.device = torch.device(device)
        self.labels: list[str] | None = None
        if task == "sequence-classification":
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
        loaders: dict[str, Any] = {
            "sequence-classification": AutoModelForSequenceClassification,
            "causal-lm": AutoModelForCausalLM,
            "seq2seq": AutoModelForSeq2SeqLM,
        }
        model = loaders[info.task].from_pretrained(str(model_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model.to(torch.device(device)).eval()
        return cls(model=model, tokenizer=tokenizer, task=info.task, device=device)

    def _require(self, task: str | tuple[str, ...], what: str) -> None:
        tasks = (task,) if isinstance(task, str) else task
        if self.task not in tasks:
            raise ValueError(f"{what} needs a {' or '.join(tasks)} model, this one is {self.task}")

    @torch.inference_mode()
    def classify(self, inputs: Sequence[ClassifyInput]) -> list[dict[str, Any]]:
        """[{"label", "score", "scores": {label: probability}}] for each text or text pair."""
        self._require("sequence-classification", "classify")
        assert self.labels is not None
        pairs = [_as_pair(item) for item in inputs]
        results: list[dict[str, Any]] = [{} for _ in pairs]
        # Singles and pairs are tokenised apart: a tokenizer call takes one kind at a time.
        groups = [
            [i for i, (_, b) in enumerate(pairs) if b is None],
            [i for i, (_, b) in enumerate(pairs) if b is not None],
        ]
        for indices in groups:
            for start in range(0, len(indices), BATCH_SIZE):
                chunk = indices[start : start + BATCH_SIZE]
                texts = [pairs[i][0] for i in chunk]
                seconds = [pairs[i][1] for i in chunk]
                encoded = self.tokenizer(
                    texts,
                    seconds if seconds[0] is not None else None,  # type: ignore[arg-type]
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                probs = torch.softmax(self.model(**encoded).logits.float(), dim=-1).cpu()
                for i, row in zip(chunk, probs.tolist(), strict=True):
                    best = max(range(len(row)), key=row.__getitem__)
                    scores = dict(zip(self.labels, map(float, row), strict=True))
                    results[i] = {"label": self.labels[best], "score": row[best], "scores": scores}
        return results

    @torch.inference_mode()
    def generate(self, inputs: Sequence[str], max_new_tokens: int) -> list[dict[str, Any]]:
        """[{"text"}] for each prompt: greedy decoding, the continuation only for causal LMs."""
        self._require(("causal-lm", "seq2seq"), "generate")
        tokenizer = self.tokenizer
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        causal = self.task == "causal-lm"
        # A causal LM continues from the last position, so prompts are padded on the left.
        tokenizer.padding_side = "left" if causal else "right"
        outputs: list[dict[str, Any]] = []
        for start in range(0, len(inputs), BATCH_SIZE):
            chunk = list(inputs[start : start + BATCH_SIZE])
            encoded = tokenizer(
                chunk, truncation=True, max_length=self.max_length, padding=True,
                return_tensors="pt",
            ).to(self.device)
            generated = self.model.generate(  # type: ignore[operator]
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            if causal:
                generated = generated[:, encoded["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            outputs.extend({"text": text.strip() if not causal else text} for text in texts)
        return outputs
