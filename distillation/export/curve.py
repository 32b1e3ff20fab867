"""The training curve shipped with a model: train loss by step above, evaluation by epoch below."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The object API with the Agg canvas draws without pyplot, so no global backend is switched and
# nothing needs a display.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CURVE_FILE = "training_curve.png"


def eval_series(evals: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{metric name: [(step, value), ...]} of the numeric `eval_*` metrics in per-epoch evals."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in evals:
        for key, value in row.items():
            if key.startswith("eval_") and isinstance(value, int | float) \
                    and not isinstance(value, bool):
                series.setdefault(key.removeprefix("eval_"), []).append((int(row["step"]),
                                                                         float(value)))
    return series


def write_training_curve(
    path: Path, history: Sequence[tuple[int, float]], evals: Sequence[dict[str, Any]],
) -> bool:
    """Draw `history` (step, mean train loss) and the per-epoch evaluations into a PNG at `path`;
    False, and no file, when there is nothing to draw."""
    series = eval_series(evals)
    if not history and not series:
        return False
    fig = Figure(figsize=(8, 6 if series else 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if series else 1, 1, sharex=True, squeeze=False)[:, 0]
    loss_ax = axes[0]
    if history:
        steps, losses = zip(*history, strict=True)
        loss_ax.plot(steps, losses, color="tab:blue", marker="." if len(steps) < 50 else None)
    loss_ax.set_ylabel("train loss")
    loss_ax.set_title("Distillation: train loss by step" + (", evaluation by epoch" if series else ""))
    loss_ax.grid(alpha=0.3)
    if series:
        eval_ax = axes[1]
        # Fractions (accuracy, F1, ROUGE) share the left axis; other scales (perplexity, BLEU
        # in points) get a right one, so neither flattens the other.
        fraction = {name: max(abs(y) for _, y in points) <= 1.0 for name, points in series.items()}
        other_ax = eval_ax.twinx() if len(set(fraction.values())) > 1 else None
        lines = []
        for n, (name, points) in enumerate(series.items()):
            xs, ys = zip(*points, strict=True)
            ax = eval_ax if fraction[name] or other_ax is None else other_ax
            lines += ax.plot(xs, ys, marker="o" if fraction[name] else "s", color=f"C{n + 1}",
                             label=name.replace("_", " "))
        for row in evals:
            eval_ax.axvline(int(row["step"]), color="grey", alpha=0.2)
            if row.get("epoch") is not None:
                eval_ax.annotate(f"epoch {row['epoch']}", (int(row["step"]), 0),
                                 xycoords=("data", "axes fraction"), xytext=(-2, 2),
                                 textcoords="offset points", ha="right", fontsize=7, color="grey")
        eval_ax.set_ylabel("evaluation")
        eval_ax.legend(handles=lines, loc="best", fontsize=8)
        eval_ax.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return True
