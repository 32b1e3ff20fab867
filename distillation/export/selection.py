"""Best-epoch selection: which epoch's student the job exports (`hyperparameters.select`).

With `"best"` (the default) the student is scored after every epoch on the validation file, and
whenever it scores at least as well as the best epoch so far its weights are kept in the job's
work directory (ties go to the later epoch, so a flat curve exports the last epoch, as `"last"`
would). After the last epoch those weights are loaded back into the student, so the evaluate
stage, the report and the export all see the selected epoch.

The kept state survives a worker's death: `work_dir/best/student-epoch-<n>.safetensors` is
written to a temporary name and renamed into place, then `best.json` (epoch, step, metric,
value, and the training settings it belongs to) the same way; `best.json` is the commit point,
so a half-written file is never the one it names. A resumed attempt re-trains from its last
checkpoint exactly as before (RNG and data order restored), so the epochs it evaluates again
score as they did and the kept state stays consistent.

The metric is the task's report metric when the per-epoch evaluation has it (accuracy for
classifiers), else perplexity (seq2seq scores ROUGE-L only at the end: generation is too slow
to run every epoch); lower is better for perplexity.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

from distillation.config import Hyperparameters, Reporter
from distillation.export.report import LOWER_IS_BETTER
from distillation.layout import BEST_STATE, best_dir
from distillation.training.checkpoint import FINGERPRINT_KEYS

# Per-epoch metrics are named "eval_<metric>" (see Task.epoch_metrics).
PREFIX = "eval_"


def _score(metric: str, value: float) -> float:
    """Higher is better, whatever the metric; NaN scores worst."""
    if math.isnan(value):
        return -math.inf
    return -value if metric in LOWER_IS_BETTER else value


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)  # atomic on one file system: readers see the old file or the new


class EpochSelector:
    """Keeps the best epoch's student as training goes (`observe`), and hands the chosen one back
    at the end (`select`)."""

    def __init__(self, work_dir: Path, *, hp: Hyperparameters, report_metric: str,
                 eval_split: str, reporter: Reporter) -> None:
        self.dir = best_dir(work_dir)
        self.requested = hp.select
        # Without a validation file the epochs are scored on training examples, which rewards
        # overfitting rather than measuring it: the last epoch is exported then.
        self.mode = hp.select if eval_split == "validation" else "last"
        self.eval_split = eval_split
        self.metrics = (report_metric, *(m for m in LOWER_IS_BETTER if m != report_metric))
        self.fingerprint = {key: getattr(hp, key) for key in FINGERPRINT_KEYS}
        self.reporter = reporter

    def metric_of(self, metrics: dict[str, Any]) -> str | None:
        """The metric epochs are compared by, among those of an epoch's evaluation."""
        return next((m for m in self.metrics if PREFIX + m in metrics), None)

    # -- during training -------------------------------------------------------------------------
    def observe(self, epoch: int, step: int, metrics: dict[str, Any], student: nn.Module) -> None:
        """After an epoch's evaluation: keep the student when it is the best epoch so far."""
        metric = self.metric_of(metrics)
        if self.mode != "best" or metric is None:
            return
        value = float(metrics[PREFIX + metric])
        best = self.best()
        if best is not None and best["epoch"] != epoch \
                and _score(metric, best["value"]) > _score(metric, value):
            return
        self._save(student, {"epoch": epoch, "step": step, "metric": metric, "value": value,
                             "fingerprint": self.fingerprint})

    def best(self) -> dict[str, Any] | None:
        """The kept epoch ({"epoch", "step", "metric", "value", ...}), if it belongs to this run."""
        try:
            state = json.loads((self.dir / BEST_STATE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint \
                or not (self.dir / self._weights(state["epoch"])).is_file():
            return None  # another run's (other settings), or an incomplete write
        return state

    @staticmethod
    def _weights(epoch: int) -> str:
        return f"student-epoch-{epoch}.safetensors"

    def _save(self, student: nn.Module, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = self._weights(state["epoch"])
        tag = uuid.uuid4().hex[:8]
        save_model(student, str(self.dir / f".tmp-{tag}-{name}"))
        _replace(self.dir / f".tmp-{tag}-{name}", self.dir / name)
        (self.dir / f".tmp-{tag}-{BEST_STATE}").write_text(json.dumps(state))
        _replace(self.dir / f".tmp-{tag}-{BEST_STATE}", self.dir / BEST_STATE)
        for path in self.dir.iterdir():  # earlier bests, and leftovers of a write cut short
            if path.name not in (name, BEST_STATE):
                path.unlink(missing_ok=True)

    # -- after training --------------------------------------------------------------------------
    def select(self, student: nn.Module, evals: list[dict[str, Any]]) -> dict[str, Any]:
        """Load the selected epoch's weights into `student`; the report's `epoch_selection` entry:
        {"mode", "epoch", "epochs", "metric", "value", "split"} (+ "requested" and "reason"
        when "best" was asked for but the last epoch is exported)."""
        last = evals[-1] if evals else {}
        metric = self.metric_of(last)
        epochs = int(last.get("epoch", 0))
        chosen: dict[str, Any] = {
            "mode": "last", "epoch": epochs, "epochs": epochs, "metric": metric,
            "value": float(last[PREFIX + metric]) if metric else None, "split": self.eval_split,
        }
        best = self.best() if self.mode == "best" else None
        if best is not None:
            if best["epoch"] != epochs:
                load_model(student, str(self.dir / self._weights(best["epoch"])))
            chosen.update(mode="best", epoch=best["epoch"], metric=best["metric"],
                          value=best["value"])
        elif self.requested == "best":
            chosen.update(requested="best", reason=(
                "no validation file: epochs scored on training examples would reward overfitting"
                if self.eval_split != "validation" else "no per-epoch evaluation to compare"))
        self.reporter.message(f"Exporting the student of {describe(chosen)}.",
                              data={"epoch_selection": chosen})
        return chosen


def describe(chosen: dict[str, Any]) -> str:
    """The selection in words, for the job's events and the model card: "epoch 2 of 3, the best
    on the validation file (accuracy 0.8125)"."""
    figure = (f" ({chosen['metric']} {chosen['value']:.4g})"
              if chosen.get("metric") is not None and chosen.get("value") is not None else "")
    which = f"epoch {chosen['epoch']} of {chosen['epochs']}"
    if chosen["mode"] == "best":
        return f"{which}, the best on the {chosen['split']} file{figure}"
    why = f"; {chosen['reason']}" if "reason" in chosen else ""
    return f"{which}, the last{figure}{why}"
