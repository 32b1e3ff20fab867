"""A student sized to a target: `student.target = {"compression": X}` and/or
`{"max_latency_ms": Y}`.

The service picks depth and width from candidates it builds and measures, not from a formula:
every candidate is a copy of the teacher's design with fewer layers and/or a narrower hidden size
(the teacher's head width kept, so fewer heads, and as many key-value heads as divide them; the
feed-forward width in the teacher's ratio), and for each it counts the parameters exactly, with
the task's model (a language model's head included; tied embeddings counted once), at the
vocabulary the student will have, pruned or not, and, for a latency target, times a forward pass
at batch 1 on this machine's CPU. Among the candidates that meet every target it takes the one
that, initialised from the teacher (`students.init_from_teacher`: layers copied, heads kept
whole, widths projected onto the teacher's hidden-state directions), is already closest to the
teacher on a sample of the job's training examples before any training (`Task.init_score`: a
classifier's agreement, a language model's probability of the teacher's next tokens): how much
of the teacher a shape keeps from the start is what training then builds on, and it is measured,
not guessed (on SST-2 the fine-tuned MiniLM cut to 3 × 256 scores 71.4% dev accuracy untrained,
2 × 288 65.9%). Width, then depth, break ties (and rank alone when the engine has no data to
score on). When none meets the target, the error says what the closest candidate reaches.

A language model's vocabulary is most of a small student: SmolLM2-135M-Instruct's tied
49,152 × 576 embeddings are 28.3M of its 134.5M parameters, so at 4x (33.6M) a student of its
full width has room for one layer; the deepest that fit at narrower widths are 5 × 448, 9 × 384,
29 × 256 and 30 × 192. Scored at init, 29 × 256 keeps the most, and it also distils best of
1 × 576, 9 × 384 and 29 × 256 in the same budget (benchmarks/lm_student_shapes.py).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from distillation.models.info import CLASSIFICATION
from distillation.students.build import INTERMEDIATE_ATTRS, sized_config
from distillation.tasks import get_task

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


class TargetUnreachable(ValueError):
    """No candidate meets the target; the message names the closest one."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def head_width(config: PretrainedConfig) -> int:
    """The width of one attention head (Llama's `head_dim`, T5's `d_kv`, else hidden / heads)."""
    width = getattr(config, "head_dim", None) or getattr(config, "d_kv", None)
    if isinstance(width, int) and width > 0:
        return width
    return int(config.hidden_size) // int(config.num_attention_heads)


def feed_forward_width(config: PretrainedConfig) -> int:
    """The feed-forward width, by whichever name the family gives it (4 × hidden when unset, as
    GPT-2's `n_inner` is)."""
    for name in INTERMEDIATE_ATTRS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 4 * int(config.hidden_size)


def architectures(teacher: PretrainedConfig) -> list[Candidate]:
    """The candidate shapes for a teacher: fewer layers, narrower widths, whole heads."""
    layers = int(teacher.num_hidden_layers)
    hidden = int(teacher.hidden_size)
    head_dim = head_width(teacher)
    ratio = feed_forward_width(teacher) / hidden
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


def _meta_model(config: PretrainedConfig, task: str) -> PreTrainedModel:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return get_task(task).model_class.from_config(config)  # type: ignore[no-any-return]


def count(teacher: PretrainedConfig, candidate: Candidate, vocab_size: int, *,
          task: str = CLASSIFICATION) -> Candidate:
    """The candidate with its exact parameter count, as the task's model (built on the meta
    device: no memory); shared weights (tied embeddings) count once."""
    model = _meta_model(_config(teacher, candidate, vocab_size), task)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    assert isinstance(embedding, torch.Tensor)
    return Candidate(**{**asdict(candidate), "parameters": total,
                        "embedding_parameters": embedding.numel()})


def count_all(teacher: PretrainedConfig, candidates: list[Candidate], vocab_size: int, *,
              task: str = CLASSIFICATION) -> list[Candidate]:
    """`count` of every candidate. Each layer of a stack adds the same parameters, so each width
    is built at one and two layers and the depths between follow (checked against the deepest,
    built too; a stack whose layers differ is counted depth by depth): a few builds, not one a
    candidate (a 30-layer teacher has nearly 150)."""
    by_width: dict[tuple[int, int, int], list[Candidate]] = {}
    for c in candidates:
        by_width.setdefault((c.hidden_size, c.num_heads, c.intermediate_size), []).append(c)
    counted: dict[Candidate, Candidate] = {}
    for group in by_width.values():
        deepest = max(group, key=lambda c: c.num_layers)

        def at(n: int, like: Candidate = deepest) -> Candidate:
            return count(teacher, replace(like, num_layers=n), vocab_size, task=task)

        one, two = at(1), at(2)
        per_layer = two.parameters - one.parameters
        last = at(deepest.num_layers)
        linear = last.parameters == one.parameters + (deepest.num_layers - 1) * per_layer
        for c in group:
            counted[c] = (replace(one, num_layers=c.num_layers,
                                  parameters=one.parameters + (c.num_layers - 1) * per_layer)
                          if linear else count(teacher, c, vocab_size, task=task))
    return [counted[c] for c in candidates]


def teacher_parameters(teacher: PretrainedConfig, *, task: str = CLASSIFICATION) -> int:
    model = _meta_model(copy.deepcopy(teacher), task)
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def measure(teacher: PretrainedConfig, candidate: Candidate, *, runs: int = LATENCY_RUNS,
            tokens: int = LATENCY_TOKENS, task: str = CLASSIFICATION) -> Candidate:
    """The candidate with its median CPU latency at batch 1: a forward pass of the task's model
    over `tokens` tokens (an encoder-decoder's decoder reads as many), weights random: speed
    only."""
    vocab = candidate.embedding_parameters // candidate.hidden_size or int(teacher.vocab_size)
    config = _config(teacher, candidate, vocab)
    model = get_task(task).model_class.from_config(config).eval()
    ids = torch.randint(0, vocab, (1, tokens))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    times = []
    for i in range(runs + 3):
        start = time.perf_counter()
        model(**inputs)
        if i >= 3:  # warm-up runs discarded
            times.append(time.perf_counter() - start)
    times.sort()
    return Candidate(**{**asdict(candidate), "latency_ms": round(times[len(times) // 2] * 1000, 3)})


def _meets(c: Candidate, *, max_parameters: float | None, max_latency_ms: float | None) -> bool:
    if max_parameters is not None and c.parameters > max_parameters:
        return False
    return max_latency_ms is None or (c.latency_ms is not None and c.latency_ms <= max_latency_ms)


def check_target(teacher: PretrainedConfig, target: dict[str, float], *,
                 vocab_size: int, task: str = CLASSIFICATION) -> None:
    """TargetUnreachable when not even the smallest (for compression) or the fastest (for
    latency, measured here) candidate meets the target: the API's check at job creation, which
    builds one model, where `pick` measures them all."""
    candidates = count_all(teacher, architectures(teacher), vocab_size, task=task)
    smallest = min(candidates, key=lambda c: (c.parameters, c.num_layers))
    compression = target.get("compression")
    total = teacher_parameters(teacher, task=task)
    if compression and smallest.parameters > total / compression:
        pick(teacher, {"compression": compression}, vocab_size=vocab_size,
             task=task)  # raises, explained
    max_latency = target.get("max_latency_ms")
    if max_latency is not None:
        fastest = measure(teacher, min(candidates, key=lambda c: (c.num_layers, c.hidden_size)),
                          task=task)
        if fastest.latency_ms is not None and fastest.latency_ms > max_latency:
            raise TargetUnreachable(
                f"student.target.max_latency_ms {max_latency:g} cannot be met on this machine: "
                f"the fastest candidate, {fastest.describe()}, takes {fastest.latency_ms:.2f} ms "
                f"at batch 1 ({LATENCY_TOKENS} tokens)", "student.target.max_latency_ms")


def deepest_of_each_width(candidates: list[Candidate]) -> list[Candidate]:
    """The deepest candidate of each width: at one width, a deeper student keeps more of the
    teacher's layers (`pick` scores only these when there are too many to score them all)."""
    deepest: dict[int, Candidate] = {}
    for c in candidates:
        if c.hidden_size not in deepest or c.num_layers > deepest[c.hidden_size].num_layers:
            deepest[c.hidden_size] = c
    return sorted(deepest.values(), key=lambda c: -c.hidden_size)


# A compression target is a budget: a candidate with less than this share of it is not scored
# (when some candidate reaches it). Agreement at init favours deep, narrow students that start
# close to the teacher and end below wider ones: on SST-2 (`benchmarks/users_setting.py`, 4x
# asked) it chose 6 x 128 at 8.2x, which kept 94.8% of the teacher on the dev set, where the
# benchmark's 3 x 256 at 4.05x kept 96.6-97.4% (`benchmarks/sst2_quality.py`).
BUDGET_SHARE = 0.5


def uses_the_budget(feasible: list[Candidate], max_parameters: float | None) -> list[Candidate]:
    """The candidates with at least `BUDGET_SHARE` of the parameter budget, or all of them when
    none has (or there is no budget)."""
    if max_parameters is None:
        return feasible
    large = [c for c in feasible if c.parameters >= BUDGET_SHARE * max_parameters]
    return large or feasible


AGREEMENT_WHY = ("agrees most with the teacher once initialised from it, before any training "
                 "({:.1%} of a sample of the training examples)")


def pick(
    teacher: PretrainedConfig, target: dict[str, float], *, vocab_size: int,
    task: str = CLASSIFICATION,
    measure_fn: Callable[[PretrainedConfig, Candidate], Candidate] | None = None,
    score_fn: Callable[[Candidate], float] | None = None,
    score_key: str = "agreement_at_init", score_why: str = AGREEMENT_WHY,
    max_scored: int | None = None,
) -> tuple[Candidate, dict[str, Any]]:
    """The candidate to train for `target`, and what the report says of the choice.

    With `score_fn` (how close the candidate, initialised from the teacher, is to it on a sample
    of the job's data before training: higher is closer) the best-scoring feasible candidate
    wins, width then depth breaking ties; the report keeps the scores under `score_key` and
    explains the winner with `score_why` (formatted with its score). More than `max_scored`
    feasible candidates: only the deepest of each width is scored. Without `score_fn`, the
    widest, then deepest, wins.
    TargetUnreachable (naming `student.target.<key>`) when no candidate meets the target.
    """
    measure_fn = measure_fn or partial(measure, task=task)
    total = teacher_parameters(teacher, task=task)
    compression = target.get("compression")
    max_latency = target.get("max_latency_ms")
    max_parameters = total / compression if compression else None
    candidates = count_all(teacher, architectures(teacher), vocab_size, task=task)
    considered = len(candidates)
    if max_parameters is not None:
        small = [c for c in candidates if c.parameters <= max_parameters]
        if not small:
            best = min(candidates, key=lambda c: c.parameters)
            raise TargetUnreachable(
                f"student.target.compression {compression:g} cannot be met: the smallest "
                f"candidate, {best.describe()}, is {total / best.parameters:.2f}x smaller than "
                f"the teacher ({total:,} parameters)"
                + ("" if vocab_size < int(teacher.vocab_size)
                   or get_task(task).vocabulary_pruning_refusal is not None else
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
    feasible = uses_the_budget(feasible, max_parameters) if max_latency is None else feasible
    scores: dict[str, float] = {}
    if score_fn is not None:
        scored = (deepest_of_each_width(feasible)
                  if max_scored is not None and len(feasible) > max_scored else feasible)
        scores = {_name(c): round(score_fn(c), 4) for c in scored}
        chosen = max(scored, key=lambda c: (scores[_name(c)], c.hidden_size, c.num_layers))
        why = (f"of the {len(feasible)} candidates (of {considered}) that meet the target"
               + ("" if max_parameters is None or max_latency is not None else
                  f" with at least {BUDGET_SHARE:.0%} of its parameter budget")
               + ("" if len(scored) == len(feasible) else
                  f" (the deepest of each width scored: {len(scored)})")
               + ", the one that " + score_why.format(scores[_name(chosen)]))
    else:
        chosen = max(feasible, key=lambda c: (c.hidden_size, c.num_layers))
        why = (f"the widest, then deepest, of the {len(feasible)} candidates (of {considered}) "
               "that meet the target")
    return chosen, {
        "target": dict(target),
        "chosen": {**chosen.architecture, **_kv_heads(teacher, chosen),
                   "parameters": chosen.parameters,
                   "compression": round(total / chosen.parameters, 2),
                   "latency_ms": chosen.latency_ms},
        "vocab_size": vocab_size,
        "why": why,
        "candidates": considered,
        "feasible": len(feasible),
        **({score_key: scores} if scores else {}),
    }


def _kv_heads(teacher: PretrainedConfig, c: Candidate) -> dict[str, int]:
    """{"num_key_value_heads": n} for a teacher with grouped-query attention (the student's
    follow from its heads: `heads.kv_heads`), else nothing."""
    kv = getattr(sized_config(teacher, c.architecture), "num_key_value_heads", None)
    return {"num_key_value_heads": kv} if isinstance(kv, int) else {}


def _name(c: Candidate) -> str:
    return f"{c.num_layers}x{c.hidden_size}"
