"""The teacher-vs-student table of a distilled model's report, shared by `distill demo`,
`distill jobs follow` and `distill models get`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

# (row label, report key, format); a key neither side has is left out (an LM has no accuracy).
ROWS = [("accuracy", "accuracy", "{:.2%}"), ("macro-F1", "macro_f1", "{:.4f}"),
        ("perplexity", "perplexity", "{:.2f}"), ("BLEU", "bleu", "{:.2f}"),
        ("ROUGE-L", "rougeL", "{:.4f}"),
        ("parameters", "parameters", "{:,}"), ("size on disk (MB)", "size_bytes", "mb"),
        ("CPU latency p50, batch 1 (ms)", "latency_ms_p50", "{:.2f}"),
        ("CPU throughput, batch 32 (/s)", "throughput_per_s", "{:.1f}")]


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "mb":
        return f"{value / 1e6:.1f}"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def report_table(model: Mapping[str, Any]) -> Table:
    """The model's report as a table, with retention, speed-up and how the student was made."""
    report: Mapping[str, Any] = model.get("report") or {}
    teacher, student = report.get("teacher") or {}, report.get("student") or {}
    table = Table(title=f"Teacher vs student on the validation file ({model.get('id')})")
    table.add_column("")
    table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    for label, key, fmt in ROWS:
        if key in teacher or key in student:
            table.add_row(label, _cell(teacher.get(key), fmt), _cell(student.get(key), fmt))
    caption = []
    if report.get("retention") is not None:
        caption.append(f"retention {report['retention']:.1%}")
    if report.get("speedup") is not None:
        caption.append(f"speed-up {report['speedup']:.2f}x")
    if report.get("compression"):
        caption.append(f"{report['compression']:.1f}x fewer parameters")
    lines = [" · ".join(caption)] if caption else []
    selection = report.get("student_selection") or {}
    if selection.get("chosen"):
        chosen = selection["chosen"]
        lines.append(f"student: {chosen.get('num_layers')} layers × {chosen.get('hidden_size')}"
                     f" ({selection.get('why', '')})")
    if report.get("vocabulary"):
        vocab = report["vocabulary"]
        lines.append(f"vocabulary pruned from {vocab['pruned_from']:,} to "
                     f"{vocab['pruned_to']:,} ids")
    runtimes = report.get("runtimes") or {}
    if runtimes.get("default"):
        lines.append(f"served by default with {runtimes['default']}: "
                     f"{runtimes.get('reason', 'the only runtime exported')}")
    if report.get("stage_seconds"):
        lines.append("stages: " + ", ".join(
            f"{name} {seconds:.0f}s" for name, seconds in report["stage_seconds"].items()))
    if report.get("time_budget"):
        budget = report["time_budget"]
        planned, ran = budget["planned"], budget["ran"]
        lines.append(f"time budget {budget['budget_minutes']:g} min: planned {planned['epochs']} "
                     f"epochs ({planned['steps']} steps), ran {ran['epochs']} ({ran['steps']} "
                     f"steps) in {ran['total_minutes']:g} min: {budget['reason']}")
    table.caption = "\n".join(lines) or None
    return table
