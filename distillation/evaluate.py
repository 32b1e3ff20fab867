"""Accuracy and macro-F1 of a classifier on encoded examples.

Without a validation file the engine evaluates on (up to `TRAIN_EVAL_LIMIT`) training examples
instead and marks the split as "train": those figures show how well the models fit the data,
not how well they generalise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import Tensor, nn

from distillation.training import autocast, model_inputs, to_device

TRAIN_EVAL_LIMIT = 1000
Collator = Callable[[list[dict[str, Any]]], dict[str, Tensor]]


@torch.inference_mode()
def predict_ids(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collator: Collator,
    *,
    device: torch.device,
    batch_size: int,
    prefix: str = "",
    on_batch: Callable[[], None] | None = None,
) -> list[int]:
    """The argmax class of each example (inputs named `prefix + name` in the batch).

    `on_batch` runs before each batch (the engine checks for cancellation there).
    """
    model.eval()
    predictions: list[int] = []
    for start in range(0, len(features), batch_size):
        if on_batch is not None:
            on_batch()
        batch = to_device(collator(list(features[start : start + batch_size])), device)
        with autocast(device):
            logits = model(**model_inputs(model, batch, prefix)).logits
        predictions += logits.argmax(dim=-1).tolist()
    return predictions


def classification_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """{"accuracy", "macro_f1"} (sklearn; F1 over the classes present in either list)."""
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def evaluate(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collator: Collator,
    *,
    device: torch.device,
    batch_size: int,
    prefix: str = "",
    on_batch: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Accuracy and macro-F1 of `model` on labelled `features`."""
    predictions = predict_ids(model, features, collator, device=device, batch_size=batch_size,
                              prefix=prefix, on_batch=on_batch)
    return classification_metrics([int(f["labels"]) for f in features], predictions)
