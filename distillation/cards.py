"""The quality rows of the model card's teacher-vs-student table, and the names of the metrics in
it; each task's own card text (pipeline tag, what the model is, how to use it) is its
`Task.card`."""

from __future__ import annotations

from typing import Any

from distillation.model_info import CLASSIFICATION
from distillation.report import LOWER_IS_BETTER
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
