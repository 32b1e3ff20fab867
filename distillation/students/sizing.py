"""A student sized to a target: `student.target = {"compression": X}` and/or
`{"max_latency_ms": Y}`.

The service picks depth and width from candidates it builds and measures, not from a formula:
every candidate is a copy of the teacher's design with fewer layers and/or a narrower hidden size
(the teacher's head width kept, the feed-forward width in the teacher's ratio), and for each it
counts the parameters exactly (embeddings included, at the vocabulary the student will have,
pruned or not) and, for a latency target, times a forward pass at batch 1 on this machine's CPU.
Among the candidates that meet every target it takes the one that, initialised from the teacher
(`students.init_from_teacher`: layers copied, widths projected onto the teacher's hidden-state
directions), already agrees most with the teacher on a sample of the job's training examples
before any training: how much of the teacher a shape keeps from the start is what training then
builds on, and it is measured, not guessed (on SST-2 the fine-tuned MiniLM cut to 3 × 256 scores
71.4% dev accuracy untrained, 2 × 288 65.9%). Width, then depth, break ties (and rank alone when
the engine has no data to score on). When none meets the target, the error says what
the closest candidate reaches.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PretrainedConfig

from distillation.models.info import CLASSIFICATION
from distillation.students.build import sized_config

# Fractions of the teacher's hidden size the candidates try (rounded to whole heads).
WIDTHS = (1.0, 0.75, 2 / 3, 0.5, 1 / 3)
LATENCY_TOKENS = 32  # a sentence: the latency target is for batch 1 at this length
LATENCY_RUNS = 15


@dataclass(frozen=True)
class Candidate:
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    parameters: int = 0
    embedding_parameters: int = 0
    latency_ms: float | None = None

    @property
    def architecture(self) -> dict[str, int]:
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "num_heads": self.num_heads, "intermediate_size": self.intermediate_size}

    def describe(self) -> str:
        speed = f", {self.latency_ms:.1f} ms" if self.latency_ms is not None else ""
        return (f"{self.num_layers} layers × {self.hidden_size} ({self.parameters:,} "
                f"parameters{speed})")


def target_task_problem(task: str) -> str | None:
    """Why a `task` job cannot size its student to a target (None: it can): the one statement of
    the rule, checked at job creation and again when the student is planned."""
    if task == CLASSIFICATION:
        return None
    return (f"student.target is for {CLASSIFICATION} jobs; give a {task} job's student as "
            "student.architecture or student.model.")


class TargetUnreachable(ValueError):
    """No candidate meets the target; the message names the closest one."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def architectures(teacher: PretrainedConfig) -> list[Candidate]:
    """The candidate shapes for a teacher: fewer layers, narrower widths, whole heads."""
    layers = int(teacher.num_hidden_layers)
    hidden = int(teacher.hidden_size)
    heads = int(teacher.num_attention_heads)
    head_dim = hidden // heads
    ratio = int(getattr(teacher, "intermediate_size", 4 * hidden)) / hidden
    out: list[Candidate] = []
    widths = sorted({max(1, round(hidden * w / head_dim)) * head_dim for w in WIDTHS},
                    reverse=True)
    for n in range(1, layers + 1):
        for width in widths:
            if n == layers and width == hidden:
                continue  # the teacher itself
            out.append(Candidate(n, width, width // head_dim, round(width * ratio)))
    return out


def _config(teacher: PretrainedConfig, candidate: Candidate, vocab_size: int) -> Any:
    config = sized_config(teacher, candidate.architecture)
    config.vocab_size = vocab_size
    return config


def count(teacher: PretrainedConfig, candidate: Candidate, vocab_size: int) -> Candidate:
    """The candidate with its exact parameter count (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(
            _config(teacher, candidate, vocab_size))
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return Candidate(**{**asdict(candidate), "parameters": total,
                        "embedding_parameters": embedding})


def teacher_parameters(teacher: PretrainedConfig) -> int:
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(copy.deepcopy(teacher))
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def measure(teacher: PretrainedConfig, candidate: Candidate, *, runs: int = LATENCY_RUNS,
            tokens: int = LATENCY_TOKENS) -> Candidate:
    """The candidate with its median CPU latency at batch 1 (weights random: speed only)."""
    vocab = candidate.embedding_parameters // candidate.hidden_size or int(teacher.vocab_size)
    model = AutoModelForSequenceClassification.from_config(
        _config(teacher, candidate, vocab)).eval()
    ids = torch.randint(0, vocab, (1, tokens))
    mask = torch.ones_like(ids)
    times = []
    for i in range(runs + 3):
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if i >= 3:  # warm-up runs discarded
            times.append(time.perf_counter() - start)
    times.sort()
    return Candidate(**{**asdict(candidate), "latency_ms": round(times[len(times) // 2] * 1000, 3)})


def _meets(c: Candidate, *, max_parameters: float | None, max_latency_ms: float | None) -> bool:
    if max_parameters is not None and c.parameters > max_parameters:
        return False
    return max_latency_ms is None or (c.latency_ms is not None and c.latency_ms <= max_latency_ms)


def check_target(teacher: PretrainedConfig, target: dict[str, float], *,
                 vocab_size: int) -> None:
    """TargetUnreachable when not even the smallest (for compression) or the fastest (for
    latency, measured here) candidate meets the target: the API's check at job creation, which
    builds one model, where `pick` measures them all."""
    candidates = [count(teacher, c, vocab_size) for c in architectures(teacher)]
    smallest = min(candidates, key=lambda c: (c.parameters, c.num_layers))
    compression = target.get("compression")
    total = teacher_parameters(teacher)
    if compression and smallest.parameters > total / compression:
        pick(teacher, {"compression": compression}, vocab_size=vocab_size)  # raises, explained
    max_latency = target.get("max_latency_ms")
    if max_latency is not None:
        fastest = measure(teacher, min(candidates, key=lambda c: (c.num_layers, c.hidden_size)))
        if fastest.latency_ms is not None and fastest.latency_ms > max_latency:
            raise TargetUnreachable(
                f"student.target.max_latency_ms {max_latency:g} cannot be met on this machine: "
                f"the fastest candidate, {fastest.describe()}, takes {fastest.latency_ms:.2f} ms "
                f"at batch 1 ({LATENCY_TOKENS} tokens)", "student.target.max_latency_ms")


def pick(
    teacher: PretrainedConfig, target: dict[str, float], *, vocab_size: int,
    measure_fn: Callable[[PretrainedConfig, Candidate], Candidate] = measure,
    score_fn: Callable[[Candidate], float] | None = None,
) -> tuple[Candidate, dict[str, Any]]:
    """The candidate to train for `target`, and what the report says of the choice.

    With `score_fn` (how well the candidate, initialised from the teacher, agrees with it on a
    sample of the job's data before training) the best-scoring feasible candidate wins, width
    then depth breaking ties; without, the widest, then deepest.
    TargetUnreachable (naming `student.target.<key>`) when no candidate meets the target.
    """
    total = teacher_parameters(teacher)
    compression = target.get("compression")
    max_latency = target.get("max_latency_ms")
    max_parameters = total / compression if compression else None
    candidates = [count(teacher, c, vocab_size) for c in architectures(teacher)]
    considered = len(candidates)
    if max_parameters is not None:
        small = [c for c in candidates if c.parameters <= max_parameters]
        if not small:
            best = min(candidates, key=lambda c: c.parameters)
            raise TargetUnreachable(
                f"student.target.compression {compression:g} cannot be met: the smallest "
                f"candidate, {best.describe()}, is {total / best.parameters:.2f}x smaller than "
                f"the teacher ({total:,} parameters)"
                + ("" if vocab_size < int(teacher.vocab_size) else
                   "; set student.prune_vocabulary to true to shrink the embeddings"),
                "student.target.compression")
        candidates = small
    if max_latency is not None:
        candidates = [measure_fn(teacher, c) for c in candidates]
    feasible = [c for c in candidates
                if _meets(c, max_parameters=max_parameters, max_latency_ms=max_latency)]
    if not feasible:
        fastest = min(candidates, key=lambda c: c.latency_ms or float("inf"))
        raise TargetUnreachable(
            f"student.target.max_latency_ms {max_latency:g} cannot be met on this machine: the "
            f"fastest candidate, {fastest.describe()}, takes {fastest.latency_ms:.2f} ms at "
            f"batch 1 ({LATENCY_TOKENS} tokens)", "student.target.max_latency_ms")
    scores: dict[str, float] = {}
    if score_fn is not None:
        scores = {_name(c): round(score_fn(c), 4) for c in feasible}
        chosen = max(feasible, key=lambda c: (scores[_name(c)], c.hidden_size, c.num_layers))
        why = (f"of the {len(feasible)} candidates (of {considered}) that meet the target, the "
               f"one that agrees most with the teacher once initialised from it, before any "
               f"training ({scores[_name(chosen)]:.1%} of a sample of the training examples)")
    else:
        chosen = max(feasible, key=lambda c: (c.hidden_size, c.num_layers))
        why = (f"the widest, then deepest, of the {len(feasible)} candidates (of {considered}) "
               "that meet the target")
    return chosen, {
        "target": dict(target),
        "chosen": {**chosen.architecture, "parameters": chosen.parameters,
                   "compression": round(total / chosen.parameters, 2),
                   "latency_ms": chosen.latency_ms},
        "vocab_size": vocab_size,
        "why": why,
        "candidates": considered,
        "feasible": len(feasible),
        **({"agreement_at_init": scores} if scores else {}),
    }


def _name(c: Candidate) -> str:
    return f"{c.num_layers}x{c.hidden_size}"
