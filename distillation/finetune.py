"""Fine-tuning a base teacher (no task head) on the training file before it teaches: the
`finetune_teacher` stage, for every task.

The task says how the model loads (a classifier gets a fresh head for the data's labels) and
what its cross-entropy is; the fine-tuned teacher is saved in the job's work directory and
marked complete, so that a resumed attempt of the job uses it instead of training it again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from distillation.checkpoint import mark_teacher_finetuned
from distillation.config import FinetuneSpec, Hyperparameters, Reporter
from distillation.tasks.base import Task, TaskData
from distillation.training import FitResult, fit

STAGE = "finetune_teacher"


def finetune_teacher(
    model: PreTrainedModel,
    task: Task,
    data: TaskData,
    *,
    spec: FinetuneSpec,
    hp: Hyperparameters,
    save_dir: Path,
    device: torch.device,
    reporter: Reporter,
) -> FitResult:
    """Train `model` with the task's cross-entropy on the teacher's training examples and save
    it (with the teacher's tokenizer) to `save_dir`.

    Progress goes out as stage `finetune_teacher`, losses as `finetune_loss` metrics.
    """
    reporter.message(f"Fine-tuning the teacher on {len(data.teacher.train)} examples "
                     f"for {spec.epochs} epoch(s).")
    result = fit(
        modules=[model], features=data.teacher.train, collator=data.teacher.collator,
        compute_loss=lambda batch: (task.finetune_loss(model, batch), {}), hp=hp,
        epochs=spec.epochs, batch_size=spec.batch_size or hp.batch_size,
        learning_rate=spec.learning_rate, device=device, reporter=reporter, stage=STAGE,
        loss_key="finetune_loss",
    )
    model.eval()
    save_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_dir, safe_serialization=True)
    data.teacher.tokenizer.save_pretrained(save_dir)
    mark_teacher_finetuned(save_dir, epochs=result.epochs, steps=result.steps)
    # Named where it now lives, as a resumed attempt that loads it from there names it: the
    # teacher cache's header includes the name, so the next attempt reuses the cache.
    model.config._name_or_path = str(save_dir)
    return result
