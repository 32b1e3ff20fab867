"""The teacher-vs-student report: quality, size and CPU speed side by side."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distillation.training.loop import model_inputs

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
# Metrics where less is better: their retention is teacher / student.
LOWER_IS_BETTER = ("perplexity",)
Collator = Callable[[list[dict[str, Any]]], dict[str, Tensor]]


def weights_size(model_dir: Path) -> int:
    """Bytes of the weight files in a model directory."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir()
               if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _median_seconds(run: Callable[[], Any], *, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    timings = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


@torch.inference_mode()
def measure_speed(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collator: Collator,
    *,
    prefix: str = "",
    runs: int = 5,
    warmup: int = 2,
    batch_size: int = 32,
    inputs: Callable[[dict[str, Tensor]], dict[str, Any]] | None = None,
) -> dict[str, float]:
    """CPU latency (median ms, batch 1) and throughput (examples/s, batch `batch_size`).

    The model is moved to the CPU and measured in this process; inputs are real examples, so the
    sequence lengths are the data's. `inputs` picks the forward's arguments from a batch
    (default: `model_inputs`).
    """
    model.to("cpu").eval()
    rows = list(features[:batch_size])
    rows = (rows * (batch_size // len(rows) + 1))[:batch_size]
    select = inputs or (lambda b: model_inputs(model, b, prefix))
    single = select(collator(rows[:1]))
    batch = select(collator(rows))
    latency = _median_seconds(lambda: model(**single), runs=runs, warmup=warmup)
    batch_time = _median_seconds(lambda: model(**batch), runs=runs, warmup=warmup)
    return {"latency_ms_p50": round(latency * 1000, 3),
            "throughput_per_s": round(batch_size / batch_time, 1)}


def model_entry(
    metrics: dict[str, float], *, parameters: int, size_bytes: int, speed: dict[str, float]
) -> dict[str, Any]:
    """One side of the report: each quality metric (rounded), size and speed."""
    return {
        **{name: round(value, 4) for name, value in metrics.items()},
        "parameters": parameters,
        "size_bytes": size_bytes,
        **speed,
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def build_report(
    teacher: dict[str, Any], student: dict[str, Any], *, metric: str = "accuracy",
    eval_split: str = "validation", method: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """{"metric", "teacher", "student", "retention", "speedup", "compression", "eval_split",
    "method"}.

    retention = student metric / teacher metric (a fraction), or teacher / student for a metric
    where lower is better (perplexity: teacher_ppl / student_ppl, so a student that is as good
    keeps 1.0 and a worse one less); speedup = teacher latency / student latency, compression =
    teacher parameters / student parameters. `method`: how the student learnt
    (`methods.base.Method.summary`): {"name": "token" | "sequence" | "on-policy",
    "teacher_answers": what the `generate` stage did (prompts, answers, reused, written, tokens,
    seconds, tokens_per_s, unfinished, dropped; null when the teacher wrote none), and for
    on-policy "lambda", "beta", "temperature", "sampling_temperature" and "student_samples"
    (batches, on_policy_batches, answers, tokens, seconds, tokens_per_s, unfinished: this
    attempt's, which a run resumed from a checkpoint counts from there)}.
    """
    kept, base = (teacher, student) if metric in LOWER_IS_BETTER else (student, teacher)
    return {
        "metric": metric,
        "eval_split": eval_split,
        "teacher": teacher,
        "student": student,
        "retention": _ratio(kept[metric], base[metric]),
        "speedup": _ratio(teacher["latency_ms_p50"], student["latency_ms_p50"]),
        "compression": _ratio(teacher["parameters"], student["parameters"]),
        "method": method or {"name": "token", "teacher_answers": None},
    }


def time_budget_report(
    plan: dict[str, Any], *, epochs: int, steps: int, stage_seconds: dict[str, float],
    total_seconds: float,
) -> dict[str, Any]:
    """The report's "time_budget": {"budget_minutes", "planned": {"epochs", "steps",
    "examples", "all_examples", "distill_minutes" (estimated, evaluations included),
    "reserved_minutes" (the final evaluation and export), "spent_minutes" (before distilling)},
    "ran": {"epochs", "steps", "stage_minutes", "total_minutes", "total_seconds"},
    "measured": {"step_seconds",
    "samples_per_s", "steps", "epoch_minutes", "eval_seconds"}, "reason"}. `plan`: a
    `training.budget.BudgetPlan`'s summary; "ran" is this attempt's wall clock (a run resumed
    from a checkpoint counts from there), its epochs and steps the whole run's."""
    return {
        "budget_minutes": plan["budget_minutes"],
        "planned": {"epochs": plan["epochs"], "steps": plan["steps"],
                    "examples": plan["examples"], "all_examples": plan["all_examples"],
                    "distill_minutes": round(plan["estimated_s"] / 60, 2),
                    "reserved_minutes": round(plan["reserve_s"] / 60, 2),
                    "spent_minutes": round(plan["spent_s"] / 60, 2)},
        "ran": {"epochs": epochs, "steps": steps,
                "stage_minutes": {stage: round(s / 60, 2) for stage, s in stage_seconds.items()},
                "total_minutes": round(total_seconds / 60, 2),
                "total_seconds": round(total_seconds, 2)},  # a short job's minutes round to 0
        "measured": {"step_seconds": plan["step_s"], "samples_per_s": plan["samples_per_s"],
                     "steps": plan["steps_measured"],
                     "epoch_minutes": round(plan["epoch_s"] / 60, 2),
                     "eval_seconds": plan["eval_s"]},
        "reason": plan["reason"],
    }
