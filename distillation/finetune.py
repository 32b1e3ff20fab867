"""Fine-tuning a base teacher (no task head) on the training file before it teaches: the
`finetune_teacher` stage, for every task; and the check that the fine-tuned teacher learned.

The task says how the model loads (a classifier gets a fresh head for the data's labels) and
what its cross-entropy is; the fine-tuned teacher is saved in the job's work directory and
marked complete, so that a resumed attempt of the job uses it instead of training it again.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch
from transformers import PreTrainedModel

from distillation.config import FinetuneSpec, Hyperparameters, Reporter
from distillation.tasks.base import Task, TaskData
from distillation.training.checkpoint import mark_teacher_finetuned
from distillation.training.loop import FitResult, check_stop, fit

STAGE = "finetune_teacher"
# A classifier whose accuracy is not at least this far above always answering the most common
# training label has not learned the task, whatever the job does next.
CHANCE_MARGIN = 0.03


def finetune_epochs(spec: FinetuneSpec, hp: Hyperparameters, examples: int) -> int:
    """`spec.epochs`, extended by whole epochs until the optimizer steps reach `spec.min_steps`
    (a fresh head on a small file learns nothing in one short epoch)."""
    batches = math.ceil(examples / (spec.batch_size or hp.batch_size))
    per_epoch = max(1, math.ceil(batches / max(1, hp.gradient_accumulation_steps)))
    return max(spec.epochs, math.ceil(spec.min_steps / per_epoch))


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
    examples = len(data.teacher.train)
    epochs = finetune_epochs(spec, hp, examples)
    extended = (f" (extended from {spec.epochs} to reach at least {spec.min_steps} optimizer "
                "steps)" if epochs > spec.epochs else "")
    reporter.message(f"Fine-tuning the teacher on {examples} examples for {epochs} epoch(s)"
                     f"{extended}, learning rate {spec.learning_rate:g}.",
                     data={"epochs": epochs, "min_steps": spec.min_steps,
                           "learning_rate": spec.learning_rate})
    result = fit(
        modules=[model], features=data.teacher.train, collator=data.teacher.collator,
        compute_loss=lambda batch: (task.finetune_loss(model, batch), {}), hp=hp,
        epochs=epochs, batch_size=spec.batch_size or hp.batch_size,
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


def majority_rate(data: TaskData) -> float | None:
    """The share of the most common label among the training examples (None: no labels)."""
    if data.labels is None:
        return None  # language models: their labels are target tokens
    labels = [int(f["labels"]) for f in data.teacher.train]
    return max(Counter(labels).values()) / len(labels) if labels else None


def check_finetuned_teacher(
    model: PreTrainedModel, task: Task, data: TaskData, *, device: torch.device,
    batch_size: int, reporter: Reporter,
) -> list[str]:
    """Evaluate the fine-tuned teacher on the evaluation split; a warning (event, and the line
    returned for the report) when a classifier ends less than `CHANCE_MARGIN` above the
    majority-class rate of the training labels (or below it): a student distilled from it would
    learn nothing either."""
    majority = majority_rate(data)
    if majority is None or task.report_metric != "accuracy":
        return []  # language models: perplexity has no chance level to compare with
    metrics = task.evaluate(model, data.teacher, data, device=device, batch_size=batch_size,
                            on_batch=lambda: check_stop(reporter))
    accuracy, split = metrics["accuracy"], data.eval_split
    figures = {"teacher_accuracy": accuracy, "majority_rate": majority, "eval_split": split}
    if accuracy >= majority + CHANCE_MARGIN:
        reporter.message(f"The fine-tuned teacher scores {accuracy:.1%} accuracy on the {split} "
                         f"split (the most common training label is {majority:.1%}).",
                         data=figures)
        return []
    warning = (f"The fine-tuned teacher scores {accuracy:.1%} accuracy on the {split} split, "
               f"less than {CHANCE_MARGIN * 100:g} points above always answering the most "
               f"common training label ({majority:.1%}): it has not learned the task, and "
               "neither will its student. Give teacher.finetune more data, more epochs or "
               "min_steps, or another learning_rate.")
    reporter.message(warning, level="warning", data=figures)
    return [warning]
