"""What the teacher computes on the job's data, for building a student from it: the principal
directions of its hidden states (the basis a narrower student is projected onto), and how well a
teacher-initialised candidate agrees with it before any training (how `sizing` ranks shapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from distillation.config import JobConfig, Reporter, StudentSpec
from distillation.students.build import activation_directions, build_student
from distillation.students.prune import pruned_size
from distillation.students.sizing import Candidate, pick, target_task_problem
from distillation.tasks import Task, TaskData
from distillation.training.loop import Collator, Features, check_stop, model_inputs, to_device

SAMPLE = 1024  # examples: enough for a stable D × D covariance (D is a few hundred)
SCORE_SAMPLE = 512  # examples each candidate is scored on


def sample(features: Sequence[Features], n: int = SAMPLE) -> list[Features]:
    """Up to `n` examples spread evenly over the dataset (deterministic: no seed to carry)."""
    if len(features) <= n:
        return list(features)
    step = len(features) / n
    return [features[int(i * step)] for i in range(n)]


@torch.no_grad()
def hidden_state_directions(
    teacher: nn.Module, features: Sequence[Features], collator: Collator, *,
    device: torch.device, batch_size: int = 64,
) -> Tensor | None:
    """(D, D) principal directions of the teacher's hidden states (every layer's output, real
    tokens only) on a sample of `features`; None for a model that returns no `hidden_states`
    (encoder-decoders: their two stacks live in different spaces)."""
    if getattr(getattr(teacher, "config", None), "is_encoder_decoder", False):
        return None  # checked first: called without decoder inputs, it would raise, not say so
    teacher.eval()
    states: list[Tensor] = []
    rows = sample(features)
    for start in range(0, len(rows), batch_size):
        batch = to_device(collator(rows[start : start + batch_size]), device)
        out = teacher(**model_inputs(teacher, batch), output_hidden_states=True)
        hidden = getattr(out, "hidden_states", None)
        if not hidden:
            return None
        mask = batch["attention_mask"].bool() if "attention_mask" in batch else None
        for layer in hidden:
            states.append((layer[mask] if mask is not None else layer.flatten(0, 1)).cpu())
    width = states[0].shape[-1]
    return activation_directions(states, width)


@torch.no_grad()
def agreement(
    student: nn.Module, teacher_predictions: Tensor, features: Sequence[Features],
    collator: Collator, *, device: torch.device, batch_size: int = 64,
) -> float:
    """The share of `features` (a classification sample) on which `student` predicts the class
    the teacher does."""
    student.eval()
    predictions = []
    for start in range(0, len(features), batch_size):
        batch = to_device(collator(list(features[start : start + batch_size])), device)
        predictions.append(student(**model_inputs(student, batch)).logits.argmax(-1).cpu())
    return float((torch.cat(predictions) == teacher_predictions).float().mean())


@torch.no_grad()
def teacher_classes(teacher: nn.Module, features: Sequence[Features], collator: Collator, *,
                    device: torch.device, batch_size: int = 64) -> Tensor:
    teacher.eval()
    out = []
    for start in range(0, len(features), batch_size):
        batch = to_device(collator(list(features[start : start + batch_size])), device)
        out.append(teacher(**model_inputs(teacher, batch)).logits.argmax(-1).cpu())
    return torch.cat(out)


def plan_student(
    config: JobConfig, task: Task, data: TaskData, teacher: PreTrainedModel, *, prune: bool,
    device: torch.device, reporter: Reporter,
) -> tuple[StudentSpec, Tensor | None, dict[str, Any] | None]:
    """The student to build: its spec (sized to the job's target when it has one), the teacher's
    hidden-state directions to project a narrower student onto, and, for a target, what the
    report says of the choice."""
    spec = config.student
    narrower = spec.target is not None or (
        spec.model_path is None and spec.init == "teacher"
        and (spec.architecture or {}).get("hidden_size", teacher.config.hidden_size)
        < teacher.config.hidden_size)
    directions = None
    if narrower:
        directions = hidden_state_directions(teacher, data.teacher.train, data.teacher.collator,
                                             device=device)
    if spec.target is None:
        return spec, directions, None
    problem = target_task_problem(task.name)
    if problem is not None:
        raise ValueError(problem)
    vocab = pruned_size(data, teacher.config) if prune else int(teacher.config.vocab_size)
    rows = sample(data.teacher.train, SCORE_SAMPLE)
    classes = teacher_classes(teacher, rows, data.teacher.collator, device=device)

    def score(candidate: Candidate) -> float:
        check_stop(reporter)
        shaped = replace(spec, architecture=candidate.architecture)
        student = build_student(shaped, teacher, task=task.name, directions=directions)
        return agreement(student.to(device), classes, rows, data.teacher.collator,  # type: ignore[arg-type]
                         device=device)

    chosen, selection = pick(teacher.config, spec.target, vocab_size=vocab, score_fn=score)
    reporter.message(f"Sized the student to {spec.target}: {chosen.describe()}, "
                     f"{selection['why']}.", data={"student_selection": selection})
    return replace(spec, architecture=chosen.architecture), directions, selection
