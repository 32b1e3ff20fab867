"""`hyperparameters.time_budget_minutes`: the distill stage planned to fit the job's wall clock.

The budget counts from the start of `run_job`. Before the distill stage trains, `measure_training`
times a few real optimizer steps on the job's own batches and loss, on copies of the trained
modules (the run itself starts from untouched weights and random state), and the engine times
one evaluation batch of each model. `plan_budget` then keeps aside what the stages after
distill need (the final evaluation of both models and the export, plus a margin) and plans:

- as many whole epochs as fit, at most `hp.epochs` (the ceiling) and no more than `max_steps`
  needs;
- when not one epoch fits and the job has transfer or augmented examples, one epoch over the
  labelled examples and as many of the others as fit (the transfer texts first: real texts
  before rewritten ones);
- otherwise the optimizer steps that fit (`max_steps`), a warning;
- when fewer than `min_steps_of` steps fit, `BudgetTooSmall`: the job fails naming the numbers.

The plan is kept in the work folder (`layout.TIME_BUDGET_PLAN`) and an attempt that resumes the
job reuses it, so its checkpoints (which fingerprint `epochs` and `max_steps`) still fit.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distillation.config import Hyperparameters
from distillation.layout import time_budget_path
from distillation.training.checkpoint import rng_state, set_rng_state
from distillation.training.loop import (
    BatchHook,
    Collator,
    Features,
    LossFn,
    autocast,
    length_grouped_batches,
    make_optimizer,
    optimizer_steps,
    to_device,
)

# How long the speed is measured: this many optimizer steps, or this many seconds, whichever
# comes first, after WARMUP_STEPS untimed ones (kernels compiled, allocator and caches warm).
MEASURE_STEPS = 8
MEASURE_SECONDS = 10.0
WARMUP_STEPS = 2
# Fewer optimizer steps than this (or than MIN_EPOCH_FRACTION of an epoch, for a large epoch)
# teach a student nothing worth exporting: such a budget fails the job instead.
MIN_STEPS = 20
MIN_EPOCH_FRACTION = 0.05
# Kept for the export (weights, ONNX runtimes, each measured on the CPU) and for what the
# estimates miss: this share of the budget, and at least MARGIN_SECONDS.
MARGIN_SHARE = 0.05
MARGIN_SECONDS = 60.0


class BudgetTooSmall(ValueError):
    """The time budget leaves no room for a useful amount of training."""


@dataclass(frozen=True)
class Speed:
    """What the first steps measured."""

    step_seconds: float  # one optimizer step (its accumulated batches included)
    steps: int  # optimizer steps timed
    samples_per_s: float


@dataclass(frozen=True)
class BudgetPlan:
    """What the budget planned for the distill stage, and from what (JSON in the work folder)."""

    budget_minutes: float
    spent_s: float  # wall clock of the job before distillation (measurement included)
    step_s: float
    steps_measured: int
    samples_per_s: float
    steps_per_epoch: int  # over all the training examples
    epoch_s: float  # one epoch over all the training examples, without its evaluation
    eval_s: float  # the evaluation after each epoch
    reserve_s: float  # kept for the final evaluation and the export
    epochs: int
    max_steps: int | None
    steps: int  # optimizer steps planned
    examples: int  # training examples used
    all_examples: int
    estimated_s: float  # the distill stage, as planned: its steps and evaluations
    reason: str
    warning: bool = False  # a fractional epoch or fewer examples

    def hyperparameters(self, hp: Hyperparameters) -> Hyperparameters:
        """`hp` as planned: the schedule and the checkpoints are built for these."""
        return replace(hp, epochs=self.epochs, max_steps=self.max_steps)

    def message(self) -> str:
        minutes = f"{self.budget_minutes:g} min"
        return (f"Time budget {minutes}: {self.spent_s / 60:.1f} min spent before "
                f"distillation, one epoch takes ~{self.epoch_s / 60:.1f} min "
                f"({self.samples_per_s:,.1f} samples/s measured over {self.steps_measured} "
                f"steps), evaluation ~{self.eval_s:.0f} s per epoch, "
                f"{self.reserve_s / 60:.1f} min kept for evaluation and export: planned "
                f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} ({self.steps} optimizer "
                f"steps, ~{self.estimated_s / 60:.1f} min). {self.reason}")

    def summary(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TimeBudget:
    """A job's budget, counted from when `run_job` started, and the plan made for it."""

    minutes: float
    started: float = field(default_factory=time.monotonic)
    plan: BudgetPlan | None = None

    def spent(self) -> float:
        """Seconds of this attempt so far."""
        return time.monotonic() - self.started


def min_steps_of(steps_per_epoch: int) -> int:
    """The fewest optimizer steps worth a job: MIN_STEPS or MIN_EPOCH_FRACTION of an epoch,
    whichever is more, but never more than the epoch."""
    return min(max(MIN_STEPS, math.ceil(MIN_EPOCH_FRACTION * steps_per_epoch)),
               max(1, steps_per_epoch))


def reserve_seconds(budget_s: float, final_eval_s: float) -> float:
    """What the stages after distill are given: the final evaluation, plus the margin."""
    return final_eval_s + max(MARGIN_SECONDS, MARGIN_SHARE * budget_s)


def plan_budget(
    *, hp: Hyperparameters, budget_minutes: float, spent_s: float, speed: Speed,
    examples: int, extra_examples: int, eval_s: float, reserve_s: float,
) -> BudgetPlan:
    """The epochs (or steps, or examples) of `examples` training examples that fit what is left
    of the budget; `extra_examples`: how many of them, the last ones, are transfer or augmented
    examples the plan may leave out. Raises `BudgetTooSmall`."""
    per_step = hp.batch_size * max(1, hp.gradient_accumulation_steps)
    per_epoch = optimizer_steps(math.ceil(examples / hp.batch_size),
                                replace(hp, max_steps=None), 1)
    epoch_s = per_epoch * speed.step_seconds
    budget_s = budget_minutes * 60
    left = budget_s - spent_s - reserve_s
    fits = math.floor(left / (epoch_s + eval_s)) if left > 0 else 0
    common: dict[str, Any] = {"budget_minutes": budget_minutes, "spent_s": round(spent_s, 1),
              "step_s": round(speed.step_seconds, 4), "steps_measured": speed.steps,
              "samples_per_s": round(speed.samples_per_s, 1), "steps_per_epoch": per_epoch,
              "epoch_s": round(epoch_s, 1), "eval_s": round(eval_s, 1),
              "reserve_s": round(reserve_s, 1), "all_examples": examples}
    if fits >= 1:
        epochs = min(fits, hp.epochs)
        steps = optimizer_steps(math.ceil(examples / hp.batch_size), hp, epochs)
        epochs = min(epochs, math.ceil(steps / per_epoch))  # `max_steps` may end it sooner
        if fits > hp.epochs:
            reason = (f"{fits} epochs would fit; {hp.epochs} is the most this job runs "
                      "(`epochs`).")
        else:
            reason = f"{epochs} whole epoch{'s' if epochs != 1 else ''} fit what is left."
        if hp.max_steps is not None and steps < per_epoch * epochs:
            reason += f" `max_steps` ({hp.max_steps}) ends the run sooner."
        return BudgetPlan(**common, epochs=epochs, max_steps=hp.max_steps, steps=steps,
                          examples=examples, estimated_s=round(
                              steps * speed.step_seconds + epochs * eval_s, 1), reason=reason)

    steps_fit = max(0, math.floor((left - eval_s) / speed.step_seconds)) if left > 0 else 0
    if hp.max_steps is not None:
        steps_fit = min(steps_fit, hp.max_steps)
    needed = min_steps_of(per_epoch)
    if steps_fit < needed:
        raise BudgetTooSmall(
            f"the time budget of {budget_minutes:g} min is too small: {spent_s / 60:.1f} min "
            f"were spent before distillation, one epoch takes ~{epoch_s / 60:.1f} min "
            f"({per_epoch} optimizer steps of ~{speed.step_seconds:.2f} s, measured), its "
            f"evaluation ~{eval_s:.0f} s, and {reserve_s / 60:.1f} min are kept for the final "
            f"evaluation and export, which leaves room for {steps_fit} optimizer steps; at "
            f"least {needed} are needed. Raise hyperparameters.time_budget_minutes, or train "
            "on fewer examples.")
    labelled = examples - extra_examples
    used = steps_fit * per_step
    if extra_examples > 0 and labelled >= 1 and used >= labelled:
        steps = optimizer_steps(math.ceil(used / hp.batch_size), hp, 1)
        return BudgetPlan(
            **common, epochs=1, max_steps=hp.max_steps, steps=steps, examples=used,
            estimated_s=round(steps * speed.step_seconds + eval_s, 1), warning=True,
            reason=(f"One epoch over all {examples:,} examples does not fit: planned one "
                    f"epoch over the {labelled:,} labelled examples and {used - labelled:,} of "
                    f"the {extra_examples:,} transfer and augmented ones."))
    return BudgetPlan(
        **common, epochs=1, max_steps=steps_fit, steps=steps_fit, examples=examples,
        estimated_s=round(steps_fit * speed.step_seconds + eval_s, 1), warning=True,
        reason=(f"One epoch does not fit: planned {steps_fit} of its {per_epoch} optimizer "
                f"steps ({steps_fit / per_epoch:.0%} of the examples, `max_steps` "
                f"{steps_fit})."))


def save_plan(work_dir: Path, plan: BudgetPlan) -> None:
    """Written whole, then renamed into place (the next attempt gets it linked)."""
    path = time_budget_path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(plan.summary()))
    os.replace(tmp, path)


def load_plan(work_dir: Path, budget_minutes: float) -> BudgetPlan | None:
    """The plan an earlier attempt of the job made for this budget, if there is one."""
    try:
        plan = BudgetPlan(**json.loads(time_budget_path(work_dir).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return plan if plan.budget_minutes == budget_minutes else None


def measure_training(
    *, modules: Sequence[nn.Module], compute_loss: LossFn, features: Sequence[Features],
    collator: Collator, hp: Hyperparameters, device: torch.device,
    on_batch: Callable[[], None], prepare_batch: BatchHook | None = None,
    shared: Sequence[Any] = (), steps: int = MEASURE_STEPS, seconds: float = MEASURE_SECONDS,
    warmup: int = WARMUP_STEPS,
) -> Speed:
    """Seconds per optimizer step of `compute_loss` on the job's batches (the first epoch's
    order), over copies of `modules`, `compute_loss` and `prepare_batch` (what they hold of
    `shared`, such as the frozen teacher and the cache, is used as it is). The random state is
    put back afterwards, so the run that follows draws what it would have drawn."""
    memo: dict[int, Any] = {id(obj): obj for obj in shared}
    copied_modules, loss_fn, prepare = copy.deepcopy(
        (list(modules), compute_loss, prepare_batch), memo)
    optimizer, _ = make_optimizer(copied_modules, hp, learning_rate=hp.learning_rate,
                                  total_steps=warmup + steps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    accum = max(1, hp.gradient_accumulation_steps)
    batches = length_grouped_batches([len(f["input_ids"]) for f in features], hp.batch_size,
                                     seed=hp.seed + 1)
    groups = [batches[i:i + accum] for i in range(0, len(batches), accum)]
    saved = rng_state()
    for module in copied_modules:
        module.train()
    timed, samples, started = 0, 0, 0.0
    try:
        for n, group in enumerate(groups[i % len(groups)] for i in range(warmup + steps)):
            if n == warmup:
                _sync(device)
                started = time.perf_counter()
            for indices in group:
                on_batch()
                batch = to_device(collator([features[i] for i in indices]), device)
                if prepare is not None:
                    batch = prepare(batch)
                with autocast(device):
                    loss, _ = loss_fn(batch)
                (loss / accum).backward()
                samples += len(indices) if n >= warmup else 0
            if hp.max_grad_norm and hp.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if n >= warmup:
                timed += 1
                _sync(device)
                if time.perf_counter() - started >= seconds:
                    break
        _sync(device)
        elapsed = time.perf_counter() - started
    finally:
        set_rng_state(saved)
    return Speed(step_seconds=elapsed / max(1, timed), steps=timed,
                 samples_per_s=samples / elapsed if elapsed > 0 else 0.0)


@torch.inference_mode()
def batch_seconds(forward: Callable[[dict[str, Tensor]], Any], features: Sequence[Features],
                  collator: Collator, *, batch_size: int, device: torch.device) -> float:
    """Seconds one evaluation batch of `features` takes `forward` (after one untimed run)."""
    if not features:
        return 0.0
    batch = to_device(collator(list(features[:batch_size])), device)
    with autocast(device):
        forward(batch)
        _sync(device)
        start = time.perf_counter()
        forward(batch)
        _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
