"""What the teacher computes on the job's data, for building a student from it: the principal
directions of its hidden states (the basis a narrower student is projected onto), and how close a
teacher-initialised candidate is to it before any training (how `sizing` ranks shapes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from distillation.config import JobConfig, Reporter, StudentSpec
from distillation.students.build import build_student
from distillation.students.prune import pruned_size
from distillation.students.sizing import Candidate, pick
from distillation.tasks import Task, TaskData
from distillation.training.loop import Collator, Features, check_stop, model_inputs, to_device

SAMPLE = 1024  # examples: enough for a stable D × D covariance (D is a few hundred)
# Hidden-state rows (tokens × layers) the covariance needs at most: a language model's examples
# are long and its layers many (SmolLM2-135M: 64 tokens × 31 states an example), so it stops
# long before SAMPLE examples; MiniLM on SST-2 (about 25 tokens × 7 states) reads them all.
DIRECTION_ROWS = 1 << 18
SCORE_SAMPLE = 512  # examples each candidate is scored on, at most ...
SCORE_CHOICES = 512  # ... or as many as hold this many of the teacher's choices (tokens)
SCORE_BATCH = 16  # a language model's logits are a vocabulary wide: small batches
# Past this many candidates that meet the target, only the deepest of each width is scored
# (a language model teacher of 30 layers gives well over a hundred; each costs a forward pass).
MAX_SCORED = 30


def sample(features: Sequence[Features], n: int = SAMPLE) -> list[Features]:
    """Up to `n` examples spread evenly over the dataset (deterministic: no seed to carry)."""
    if len(features) <= n:
        return list(features)
    step = len(features) / n
    return [features[int(i * step)] for i in range(n)]


class Moments:
    """The mean and second moment of rows, added a batch at a time (in float64): their
    principal directions without keeping the rows."""

    def __init__(self) -> None:
        self.rows = 0
        self.total: Tensor | None = None
        self.outer: Tensor | None = None

    def add(self, rows: Tensor) -> None:
        rows = rows.float()
        total, outer = rows.sum(dim=0).double(), (rows.T @ rows).double()
        self.total = total if self.total is None else self.total + total
        self.outer = outer if self.outer is None else self.outer + outer
        self.rows += rows.shape[0]

    def directions(self) -> Tensor:
        """(D, D): the principal directions of the rows, by decreasing variance, orthonormal."""
        assert self.total is not None and self.outer is not None
        mean = self.total / self.rows
        _, _, vh = torch.linalg.svd(self.outer - self.rows * torch.outer(mean, mean))
        return vh.T.float().contiguous()


@torch.no_grad()
def hidden_state_directions(
    teacher: nn.Module, features: Sequence[Features], collator: Collator, *,
    device: torch.device, batch_size: int = 64,
) -> Tensor | None:
    """(D, D) principal directions of the teacher's hidden states (every layer's output, real
    tokens only) on a sample of `features` (up to `DIRECTION_ROWS` states); None for a model
    that returns no `hidden_states` (encoder-decoders: their two stacks live in different
    spaces).

    They are where the teacher's residual stream actually lives on the job's data, and keep far
    more of a teacher than its word embeddings' directions do (SST-2, the fine-tuned MiniLM cut
    to 2 layers × 288 before any training: 65.9% dev accuracy against 51.7%; 3 × 256: 71.4%
    against 58.7%). Nested: the first k of them serve any width k."""
    if getattr(getattr(teacher, "config", None), "is_encoder_decoder", False):
        return None  # checked first: called without decoder inputs, it would raise, not say so
    teacher.eval()
    # The base model: its hidden states without the head (a language model's is a vocabulary
    # wide, and the costliest part of its forward pass).
    base = getattr(teacher, "base_model", teacher)
    moments = Moments()
    rows = sample(features)
    for start in range(0, len(rows), batch_size):
        if moments.rows >= DIRECTION_ROWS:
            break
        batch = to_device(collator(rows[start : start + batch_size]), device)
        out = base(**model_inputs(base, batch), output_hidden_states=True)
        hidden = getattr(out, "hidden_states", None)
        if not hidden:
            return None
        mask = batch["attention_mask"].bool() if "attention_mask" in batch else None
        for layer in hidden:
            moments.add(layer[mask] if mask is not None else layer.flatten(0, 1))
    return moments.directions()


@torch.no_grad()
def teacher_choices(task: Task, teacher: nn.Module, features: Sequence[Features],
                    collator: Collator, *, device: torch.device) -> tuple[list[Features], Tensor]:
    """The examples a candidate is scored on (up to `SCORE_SAMPLE`, fewer once they hold
    `SCORE_CHOICES` choices) and the teacher's choice for each of their prediction rows."""
    teacher.eval()
    rows, choices = sample(features, SCORE_SAMPLE), []
    for start in range(0, len(rows), SCORE_BATCH):
        batch = to_device(collator(list(rows[start : start + SCORE_BATCH])), device)
        choices.append(task.prediction_rows(teacher, batch).argmax(-1).cpu())
        if sum(len(c) for c in choices) >= SCORE_CHOICES:
            return rows[: start + SCORE_BATCH], torch.cat(choices)
    return rows, torch.cat(choices)


@torch.no_grad()
def init_score(task: Task, student: nn.Module, choices: Tensor, features: Sequence[Features],
               collator: Collator, *, device: torch.device) -> float:
    """How close `student` is to the teacher on `features` (`Task.init_score`): the share of
    the teacher's `choices` it makes too, or the mean log-probability it gives them (nats)."""
    student.eval()
    agreed, nll, seen = 0, 0.0, 0
    for start in range(0, len(features), SCORE_BATCH):
        batch = to_device(collator(list(features[start : start + SCORE_BATCH])), device)
        logits = task.prediction_rows(student, batch).float()
        wanted = choices[seen : seen + len(logits)].to(logits.device)
        agreed += int((logits.argmax(-1) == wanted).sum())
        nll += float(F.cross_entropy(logits, wanted, reduction="sum"))
        seen += len(logits)
    if task.init_score == "likelihood":
        return -nll / max(1, seen)
    return agreed / max(1, seen)


# How the report names and explains each kind of score (`Task.init_score`).
_SCORE_REPORT = {
    "agreement": ("agreement_at_init", "agrees most with the teacher once initialised from it, "
                  "before any training ({:.1%} of a sample of the training examples)"),
    "likelihood": ("log_likelihood_at_init", "gives the teacher's own next tokens the highest "
                   "probability once initialised from it, before any training ({:.2f} nats a "
                   "token, on the target tokens of a sample of the training examples)"),
}


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
    vocab = pruned_size(data, teacher.config) if prune else int(teacher.config.vocab_size)
    collator = data.teacher.collator
    rows, choices = teacher_choices(task, teacher, data.teacher.train, collator, device=device)

    def score(candidate: Candidate) -> float:
        check_stop(reporter)
        shaped = replace(spec, architecture=candidate.architecture)
        student = build_student(shaped, teacher, task=task.name, directions=directions)
        return init_score(task, student.to(device), choices, rows, collator,  # type: ignore[arg-type]
                          device=device)

    key, why = _SCORE_REPORT[task.init_score]
    chosen, selection = pick(teacher.config, spec.target, vocab_size=vocab, task=task.name,
                             score_fn=score, score_key=key, score_why=why,
                             max_scored=MAX_SCORED)
    reporter.message(f"Sized the student to {spec.target}: {chosen.describe()}, "
                     f"{selection['why']}.", data={"student_selection": selection})
    return replace(spec, architecture=chosen.architecture), directions, selection
