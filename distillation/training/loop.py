"""What every training loop here shares: device and precision, optimizer and schedule, progress
reports with an ETA, and the cancellation check."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn
from transformers import get_scheduler

from distillation.config import Cancelled, Hyperparameters, Progress, Reporter
from distillation.training.schedules import step_progress

if TYPE_CHECKING:
    from distillation.training.ranks import Ranks

PROGRESS_EVERY_S = 2.0
Features = dict[str, Any]  # one encoded example: token ids, labels, ...
Collator = Callable[[list[Features]], dict[str, Tensor]]  # examples -> a padded batch


def resolve_device(name: str | None) -> torch.device:
    """The requested device, else CUDA when present, else CPU; TF32 matmuls on CUDA."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


# Whether the training in this context runs its CPU matrix products in bf16 (`cpu_bf16`).
_CPU_BF16: ContextVar[bool] = ContextVar("cpu_bf16", default=False)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-BF16), where bf16
    autocast is faster; elsewhere it would be emulated, and slower than fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@contextlib.contextmanager
def cpu_bf16(enabled: bool | None) -> Iterator[bool]:
    """bf16 autocast on the CPU in this block (None: where `native_cpu_bf16`); yields whether.

    The weights, the optimizer and the losses stay fp32 (mixed precision, as on CUDA); outside
    such a block a CPU runs fp32, so a served model is evaluated as it answers."""
    on = native_cpu_bf16() if enabled is None else enabled
    token = _CPU_BF16.set(on)
    try:
        yield on
    finally:
        _CPU_BF16.reset(token)


def cpu_bf16_on() -> bool:
    """Whether this context trains in bf16 on a CPU (set by `cpu_bf16`)."""
    return _CPU_BF16.get()


def trains_in_bf16(device: torch.device) -> bool:
    """Whether `autocast` runs this context's products on `device` in bf16."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_on())


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA, and on a CPU inside `cpu_bf16`; plain fp32 elsewhere."""
    if trains_in_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@functools.cache
def _accepted_inputs(forward: Callable[..., Any]) -> tuple[str, ...]:
    """Which of the usual inputs a forward function takes (read once per function: inspecting
    a signature costs more than dispatching a small model's whole step)."""
    accepted = inspect.signature(forward).parameters
    return tuple(k for k in _INPUTS if k in accepted)


def model_inputs(model: nn.Module, batch: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The batch entries (named `prefix + name`) that the model's forward accepts."""
    # The class's forward, or one a hook library set on the instance.
    forward = vars(model).get("forward") or type(model).forward
    return {k: batch[prefix + k] for k in _accepted_inputs(forward) if prefix + k in batch}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, bucket_batches: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within buckets, shuffle the batches, so
    a batch of short examples is not padded to the longest example of the epoch."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bucket = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def optimizer_steps(batches_per_epoch: int, hp: Hyperparameters, epochs: int) -> int:
    """Optimizer steps the run will take (accumulation and `max_steps` included)."""
    per_epoch = math.ceil(batches_per_epoch / max(1, hp.gradient_accumulation_steps))
    total = per_epoch * epochs
    return min(total, hp.max_steps) if hp.max_steps else total


def _fusable(params: Sequence[Tensor]) -> bool:
    """Whether AdamW's fused kernel takes these parameters: floating point, all on one CPU or
    CUDA device. It updates every tensor in one kernel instead of a dozen operations per
    tensor (benchmarks/engine_throughput.py measures it)."""
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.is_floating_point() for p in params))


def make_optimizer(
    modules: Iterable[nn.Module], hp: Hyperparameters, *, learning_rate: float, total_steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (no decay on biases and norms) with warmup then linear or cosine decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate, fused=_fusable([*decay, *no_decay]),
    )
    scheduler = get_scheduler(
        hp.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=math.ceil(hp.warmup_ratio * total_steps),
        num_training_steps=max(1, total_steps),
    )
    return optimizer, scheduler


def check_stop(reporter: Reporter) -> None:
    if reporter.should_stop():
        raise Cancelled("stopped on request")


class Tracker:
    """Progress of one stage: reported at start, every few seconds or on demand, and at the end."""

    def __init__(self, reporter: Reporter, stage: str, total_steps: int, *, start: int = 0,
                 epoch: int = 0) -> None:
        self.reporter = reporter
        self.stage = stage
        self.total = max(1, total_steps)
        self.start = start  # steps an earlier attempt did (a resumed run): not part of this pace
        self.started = time.monotonic()
        self.last = -math.inf
        self.report(start, epoch, force=True)

    def report(self, step: int, epoch: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        elapsed = now - self.started
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else None
        self.reporter.progress(Progress(
            stage=self.stage, percent=round(min(100.0, 100.0 * step / self.total), 2), step=step,
            total_steps=self.total, epoch=epoch, eta_seconds=round(eta, 1) if eta is not None else None,
        ))

    def done(self, epoch: int) -> None:
        self.reporter.progress(Progress(stage=self.stage, percent=100.0, step=self.total,
                                        total_steps=self.total, epoch=epoch, eta_seconds=0.0))


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def accumulation_groups(batches: Sequence[Any], steps: int) -> list[Sequence[Any]]:
    """The batches in the groups the optimizer steps after: every `steps`, and at the end."""
    steps = max(1, steps)
    return [batches[i : i + steps] for i in range(0, len(batches), steps)]


def row_weights(rows: Sequence[int], weights: Sequence[float], accum: int) -> list[float]:
    """Loss weights that make a group's `Σ loss_i · w_i / accum` the mean over all its rows,
    when batch i's loss is the mean over its `rows[i]` rows (answer tokens): w_i = weights[i] ·
    rows[i] · accum / Σ rows, not one mean per batch averaged with equal weights."""
    total = sum(rows)
    return [w * n * accum / total if total else 0.0 for w, n in zip(weights, rows, strict=True)]


@dataclass
class FitResult:
    steps: int
    epochs: int
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss) per log
    # Per epoch: {"step", "epoch", **what on_epoch_end returned} (the curve's eval panel).
    evals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_loss(self) -> float | None:
        return self.history[-1][1] if self.history else None


@dataclass
class LoopState:
    """Where `fit` is: what a checkpoint saves, and what a resumed run restores before it starts."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    result: FitResult
    total_steps: int
    epoch: int = 1  # the epoch in progress
    batches_done: int = 0  # batches of `epoch` trained on; its order is rebuilt from batch_seed
    batch_seed: int = 0
    window: list[dict[str, float]] = field(default_factory=list)  # losses since the last log


class Checkpoints(Protocol):
    """Saves `fit`'s state as it goes, and restores it when a run starts again."""

    def restore(self, state: LoopState) -> None: ...

    def after_step(self, state: LoopState) -> None: ...


LossFn = Callable[[dict[str, Tensor]], tuple[Tensor, dict[str, float]]]
BatchHook = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def fit(
    *,
    modules: Sequence[nn.Module],
    features: Sequence[Features],
    collator: Collator,
    compute_loss: LossFn,
    hp: Hyperparameters,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    device: torch.device,
    reporter: Reporter,
    stage: str,
    loss_key: str = "train_loss",
    on_epoch_end: Callable[[int, int], dict[str, Any] | None] | None = None,
    checkpoints: Checkpoints | None = None,
    on_progress: Callable[[float], None] | None = None,
    ranks: Ranks | None = None,
    prepare_batch: BatchHook | None = None,
    loss_rows: Callable[[dict[str, Tensor]], int] | None = None,
) -> FitResult:
    """Train `modules` on `compute_loss` over length-grouped batches of `features`.

    Reports progress for `stage`, a metrics event every `hp.log_every_steps` optimizer steps
    ({loss_key, loss_<term>..., learning_rate}), checks for cancellation before every batch, and
    calls `on_epoch_end(step, epoch)` after each epoch (evaluation; the metrics it returns go to
    `FitResult.evals`). `checkpoints` restores an earlier attempt's state before the first batch
    and saves the loop after every optimizer step it chooses. `on_progress(fraction)` gets,
    before every batch, the optimizer step's place in the run (0 first, 1 last: loss schedules).
    `ranks`: one rank of a DDP group (`parallel`): it trains on its share of every batch, and
    the logged losses are the whole batch's.

    `prepare_batch(batch)` turns each batch (on the device) into the one trained on, once its
    whole accumulation group is loaded and before the group's first loss: on-policy
    distillation samples the student's answers there, from the weights of the last optimizer
    step. `loss_rows(batch)`: how many rows the loss of the (prepared) batch is a mean over
    (answer tokens); with it a group's loss is the mean over all the group's rows
    (`row_weights`), so a batch of long answers weighs more than one of short answers.
    """
    if ranks is not None and loss_rows is not None:
        raise ValueError("weighting batches by their loss rows is not implemented across "
                         "devices (DDP)")
    lengths = [len(f["input_ids"]) for f in features]
    per_epoch = math.ceil(len(features) / batch_size)
    total = optimizer_steps(per_epoch, hp, epochs)
    optimizer, scheduler = make_optimizer(modules, hp, learning_rate=learning_rate,
                                          total_steps=total)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    accum = max(1, hp.gradient_accumulation_steps)
    result = FitResult(steps=0, epochs=0)
    state = LoopState(optimizer, scheduler, result, total_steps=total)
    if checkpoints is not None:
        checkpoints.restore(state)  # a run started again goes on from its last checkpoint
    step_loss: LossFn = compute_loss if ranks is None else ranks.wrap(modules, compute_loss)

    def load(indices: list[int]) -> tuple[dict[str, Tensor], float, int]:
        """A batch (this rank's share of it), its loss weight and its examples."""
        if ranks is None:
            return collator([features[i] for i in indices]), 1.0, len(indices)
        mine, weight = ranks.shard(indices)
        return collator([features[i] for i in mine]), weight, len(mine) if weight else 0
    tracker = Tracker(reporter, stage, total, start=result.steps, epoch=result.epochs)
    window = state.window
    for module in modules:
        module.train()
    first_epoch, skip = state.epoch, state.batches_done
    for epoch in range(first_epoch, epochs + 1):
        state.batch_seed = hp.seed + epoch
        batches = length_grouped_batches(lengths, batch_size, seed=state.batch_seed)
        start = skip if epoch == first_epoch else 0
        todo = batches[start:] if result.steps < total else []
        done = start
        for group in accumulation_groups(todo, accum):
            loaded = [load(indices) for indices in group]
            if prepare_batch is not None:
                prepared = []
                for batch, weight, count in loaded:
                    check_stop(reporter)
                    prepared.append((prepare_batch(to_device(batch, device)), weight, count))
                loaded = prepared
            if loss_rows is not None:
                weights = row_weights([loss_rows(b) for b, _, _ in loaded],
                                      [w for _, w, _ in loaded], accum)
                loaded = [(b, w, c) for (b, _, c), w in zip(loaded, weights, strict=True)]
            for batch, weight, count in loaded:
                done += 1
                if loss_rows is not None and not weight:
                    continue  # no answer token to learn from (a mean over none is NaN)
                check_stop(reporter)
                if on_progress is not None:
                    on_progress(step_progress(result.steps, total))
                batch = to_device(batch, device)
                with autocast(device):
                    loss, terms = step_loss(batch)
                (loss * weight / accum).backward()
                logs = {loss_key: float(loss.detach()),
                        **{f"loss_{k}": v for k, v in terms.items()}}
                window.append(logs if ranks is None else ranks.mean_logs(logs, count))
            if hp.max_grad_norm and hp.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            tracker.report(result.steps, epoch)
            if window and (result.steps % max(1, hp.log_every_steps) == 0
                           or result.steps == total):
                means = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                result.history.append((result.steps, means[loss_key]))
                reporter.metrics(result.steps, {**means, "learning_rate": scheduler.get_last_lr()[0]})
                window.clear()
            if checkpoints is not None:
                state.epoch, state.batches_done = epoch, done
                checkpoints.after_step(state)
            if result.steps >= total:
                break
        result.epochs = epoch
        if on_epoch_end is not None:
            metrics = on_epoch_end(result.steps, epoch)
            if metrics:
                result.evals.append({"step": result.steps, "epoch": epoch, **metrics})
            for module in modules:
                module.train()
        if result.steps >= total:
            break
    tracker.done(result.epochs)
    return result
