"""Fine-tuning a base teacher (no task head) on the training file before it teaches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distillation.config import FinetuneSpec, Hyperparameters, Reporter
from distillation.training import FitResult, fit, model_inputs

STAGE = "finetune_teacher"


def finetune_teacher(
    *,
    teacher_path: Path,
    spec: FinetuneSpec,
    hp: Hyperparameters,
    labels: list[str],
    features: Sequence[dict[str, Any]],
    collator: Callable[[list[dict[str, Any]]], dict[str, Tensor]],
    tokenizer: PreTrainedTokenizerBase,
    save_dir: Path,
    device: torch.device,
    reporter: Reporter,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, FitResult]:
    """Add a fresh classification head for `labels`, train with cross-entropy, save to `save_dir`.

    Progress goes out as stage `finetune_teacher`, losses as `finetune_loss` metrics.
    """
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} \
        if attn_implementation else {}
    model = AutoModelForSequenceClassification.from_pretrained(
        str(teacher_path), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True,
        **kwargs,
    ).to(device)
    reporter.message(f"Fine-tuning the teacher on {len(features)} examples "
                     f"for {spec.epochs} epoch(s).")

    def compute_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        logits = model(**model_inputs(model, batch)).logits
        return F.cross_entropy(logits.float(), batch["labels"]), {}

    result = fit(
        modules=[model], features=features, collator=collator, compute_loss=compute_loss, hp=hp,
        epochs=spec.epochs, batch_size=spec.batch_size or hp.batch_size,
        learning_rate=spec.learning_rate, device=device, reporter=reporter, stage=STAGE,
        loss_key="finetune_loss",
    )
    model.eval()
    save_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_dir, safe_serialization=True)
    tokenizer.save_pretrained(save_dir)
    # Named where it now lives, as a resumed attempt that loads it from there names it: the
    # teacher cache's header includes the name, so the next attempt reuses the cache.
    model.config._name_or_path = str(save_dir)
    return model, result
