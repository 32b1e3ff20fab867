"""The quality rows of the model card's teacher-vs-student table, and the names of the metrics in
it; each task's own card text (pipeline tag, what the model is, how to use it) is its
`Task.card`."""

from __future__ import annotations

from typing import Any

from distillation.export.report import LOWER_IS_BETTER
from distillation.models.info import CLASSIFICATION
from distillation.tasks import TASKS, TaskCard

METRIC_NAMES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "perplexity": "Perplexity",
                "rougeL": "ROUGE-L", "bleu": "BLEU"}


def card_for(task: str) -> TaskCard:
    """What the card says of the task's models (a classifier's, for a task it does not know)."""
    return TASKS.get(task, TASKS[CLASSIFICATION]).card


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " ").capitalize())


def quality_rows(report: dict[str, Any], task: str) -> list[tuple[str, str, str, str]]:
    """(name, teacher, student, student vs teacher) for the report's metric and the task's
    other metrics; lower-is-better metrics (perplexity) are kept as teacher / student."""
    t, s = report["teacher"], report["student"]
    split = report.get("eval_split", "validation")
    names = [report["metric"]] + [m for m in card_for(task).metrics
                                  if m != report["metric"] and m in t and m in s]
    rows = []
    for n, metric in enumerate(names):
        a, b = (t[metric], s[metric]) if metric in LOWER_IS_BETTER else (s[metric], t[metric])
        label = f"{metric_name(metric)} ({split})" if n == 0 else metric_name(metric)
        rows.append((label, f"{t[metric]:.4f}", f"{s[metric]:.4f}",
                     f"{a / b:.1%} retained" if b else "n/a"))
    return rows


def retention_of(metric: str) -> str:
    """What the retention figure is a share of, for the card's summary line."""
    name = metric_name(metric)
    name = name.lower() if name[1:].islower() else name
    return f"{name} (teacher ÷ student)" if metric in LOWER_IS_BETTER else name


def runtimes_section(report: dict[str, Any]) -> str:
    """The card's "Runtimes" section: each runtime's quality and CPU speed, and which one the
    service runs by default and why ("" for a report from before runtimes were measured)."""
    info = report.get("runtimes")
    if not info:
        return ""
    entries: dict[str, dict[str, Any]] = info["runtimes"]
    if list(entries) == ["torch"]:
        return f"\n## Runtimes\n\ntorch only: {info.get('reason', '')}.\n"
    metric = report["metric"]
    split = report.get("eval_split", "validation")
    rows = "\n".join(
        f"| {name}{' (default)' if name == info['default'] else ''} | {e[metric]:.4f} | "
        f"{e['latency_ms_p50']:.2f} ms | {e['throughput_per_s']:.0f}/s | "
        f"{e['size_bytes'] / 1e6:.1f} MB |"
        for name, e in entries.items())
    header = (f"| Runtime | {metric_name(metric)} ({split}) | CPU latency, batch 1 (p50) "
              "| CPU throughput, batch 32 | Weights |")
    return f"""
## Runtimes

{header}
|---|---|---|---|---|
{rows}

Served by default in **{info['default']}**: {info.get('reason', '')}. The ONNX directories
(`onnx/`, `onnx-int8/`) hold their own tokenizer and a usage note; download one with
`GET /v1/models/{{id}}/download?format=onnx` (or `onnx-int8`).
"""


def time_budget_section(report: dict[str, Any]) -> str:
    """The card's "Time budget" section: what was planned, what ran, and why ("" without one)."""
    budget = report.get("time_budget")
    if not budget:
        return ""
    planned, ran = budget["planned"], budget["ran"]
    stages = ", ".join(f"{stage} {minutes:g}" for stage, minutes in ran["stage_minutes"].items())
    examples = ("" if planned["examples"] == planned["all_examples"] else
                f" on {planned['examples']:,} of the {planned['all_examples']:,} examples")
    return f"""
## Time budget

- Budget: {budget["budget_minutes"]:g} min
- Planned: {planned["epochs"]} epoch(s), {planned["steps"]} optimizer steps{examples}, about
  {planned["distill_minutes"]:g} min of distillation after {planned["spent_minutes"]:g} min
  of preparation, with {planned["reserved_minutes"]:g} min kept for evaluation and export
- Ran: {ran["epochs"]} epoch(s), {ran["steps"]} optimizer steps in {ran["total_minutes"]:g} min
  ({stages}; minutes per stage)
- Why: {budget["reason"]}
"""
