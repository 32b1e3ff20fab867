"""Best-epoch selection: the exported student is the epoch that scored best on the validation file
(`select: "best"`), or the last one (`"last"`); the report and the card say which; a resumed job
still knows the best epoch of its earlier attempt."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from distillation.config import Hyperparameters, JobConfig, JobResult
from distillation.engine import run_job
from distillation.export.selection import EpochSelector
from distillation.layout import BEST_DIR, BEST_STATE
from distillation.tasks.classification import ClassificationTask
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.reporting import RecordingReporter, WorkerDied

# The validation accuracy each epoch is made to score: epoch 2 is the best, the last the worst.
SCRIPT = {1: 0.6, 2: 0.9, 3: 0.5}


@dataclass
class ScriptedEpochs:
    """Stands in for the classifier's per-epoch evaluation: runs the real one (kept in `real`),
    reports SCRIPT's accuracy instead, and copies the student's weights of every epoch."""

    epoch: int = 0  # the epoch evaluated last
    real: dict[int, float] = field(default_factory=dict)
    weights: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = ClassificationTask.epoch_metrics

        def epoch_metrics(task: ClassificationTask, model: nn.Module, *args: Any,
                          **kwargs: Any) -> dict[str, float]:
            self.epoch += 1
            metrics = original(task, model, *args, **kwargs)
            self.real[self.epoch] = metrics["eval_accuracy"]
            self.weights[self.epoch] = {k: v.detach().clone() for k, v in
                                        model.state_dict().items()}
            return {**metrics, "eval_accuracy": SCRIPT[self.epoch]}

        monkeypatch.setattr(ClassificationTask, "epoch_metrics", epoch_metrics)


def make_config(teacher: Path, tmp: Path, select: str = "best") -> JobConfig:
    """32 examples in batches of 8 for 3 epochs: 12 optimizer steps, a checkpoint every 2."""
    hp = Hyperparameters(epochs=3, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=1, eval_batch_size=16, checkpoint_every_steps=2,
                         select=select)  # type: ignore[arg-type]
    return toy_job(teacher, tmp, sentiment_records(32), hyperparameters=hp,
                   validation_file=write_jsonl(tmp / "validation.jsonl",
                                               sentiment_records(16, seed=1)))


def assert_exported(result: JobResult, weights: dict[str, Tensor]) -> None:
    exported = load_file(str(result.model_dir / "model.safetensors"))
    assert exported.keys() <= weights.keys()
    for name, tensor in exported.items():
        assert torch.equal(tensor, weights[name]), name


def test_best_exports_the_best_epoch_and_says_so(
    tiny_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run whose validation accuracy peaks at epoch 2 of 3
    epochs = ScriptedEpochs()
    epochs.install(monkeypatch)
    recorder = RecordingReporter()

    # When it runs with the default selection
    result = run_job(make_config(tiny_teacher_dir, tmp_path), recorder)

    # Then the exported student is epoch 2's, and the evaluate stage measured those weights
    assert not torch.equal(epochs.weights[2]["classifier.weight"],
                           epochs.weights[3]["classifier.weight"])
    assert_exported(result, epochs.weights[2])
    report = result.report
    assert report["epoch_selection"] == {"mode": "best", "epoch": 2, "epochs": 3,
                                   "metric": "accuracy", "value": 0.9, "split": "validation"}
    assert report["student"]["accuracy"] == round(epochs.real[2], 4)
    assert report["warnings"] == []
    assert json.loads((result.model_dir / "report.json").read_text())["epoch_selection"]["epoch"] == 2
    card = (result.model_dir / "README.md").read_text()
    assert "Exported: the student of epoch 2 of 3, the best on the validation file" in card
    assert any("epoch 2 of 3" in m for m in recorder.messages)


def test_last_exports_the_last_epoch(
    tiny_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs = ScriptedEpochs()
    epochs.install(monkeypatch)

    result = run_job(make_config(tiny_teacher_dir, tmp_path, select="last"), RecordingReporter())

    assert_exported(result, epochs.weights[3])
    assert result.report["epoch_selection"] == {"mode": "last", "epoch": 3, "epochs": 3,
                                          "metric": "accuracy", "value": 0.5,
                                          "split": "validation"}
    assert result.report["student"]["accuracy"] == round(epochs.real[3], 4)
    assert not (tmp_path / "work" / BEST_DIR).exists()  # nothing kept that is not used


def test_a_resumed_job_still_exports_the_best_epoch_of_its_first_attempt(
    tiny_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run that dies at step 11, in epoch 3, after the checkpoint of step 10
    epochs = ScriptedEpochs()
    epochs.install(monkeypatch)
    config = make_config(tiny_teacher_dir, tmp_path)
    with pytest.raises(WorkerDied):
        run_job(config, RecordingReporter(die_at_step=11))
    assert json.loads((config.work_dir / BEST_DIR / BEST_STATE).read_text())["epoch"] == 2

    # When it runs again: epochs 1 and 2 are not evaluated again, only epoch 3
    second = RecordingReporter()
    result = run_job(config, second)

    # Then epoch 2, kept by the first attempt, is still the one exported
    assert second.resumed_from() == [10] and sorted(epochs.weights) == [1, 2, 3]
    assert_exported(result, epochs.weights[2])
    assert result.report["epoch_selection"]["epoch"] == 2


def _linear(value: float) -> nn.Linear:
    layer = nn.Linear(2, 1)
    nn.init.constant_(layer.weight, value)
    return layer


def test_selector_handles_lower_is_better_and_ignores_another_runs_state(tmp_path: Path) -> None:
    # Given perplexities 9, 4, 6 over three epochs
    hp = Hyperparameters(epochs=3)
    selector = EpochSelector(tmp_path, hp=hp, report_metric="perplexity",
                             eval_split="validation", reporter=RecordingReporter())
    for epoch, ppl in ((1, 9.0), (2, 4.0), (3, 6.0)):
        selector.observe(epoch, epoch * 10, {"eval_perplexity": ppl}, _linear(epoch))

    # Then the lowest (epoch 2) is selected and loaded, and only its weights are kept
    student = _linear(3)
    chosen = selector.select(student, [{"epoch": 3, "eval_perplexity": 6.0}])
    assert (chosen["mode"], chosen["epoch"], chosen["metric"], chosen["value"]) == (
        "best", 2, "perplexity", 4.0)
    assert float(student.weight[0, 0].detach()) == 2.0
    assert sorted(p.name for p in (tmp_path / BEST_DIR).iterdir()) == [
        BEST_STATE, "student-epoch-2.safetensors"]

    # and a run with other training settings does not take that state for its own
    other = EpochSelector(tmp_path, hp=Hyperparameters(epochs=3, seed=7),
                          report_metric="perplexity", eval_split="validation",
                          reporter=RecordingReporter())
    assert other.best() is None
    fresh = _linear(3)
    assert other.select(fresh, [{"epoch": 3, "eval_perplexity": 6.0}])["mode"] == "last"
    assert float(fresh.weight[0, 0].detach()) == 3.0


def test_without_a_validation_file_best_falls_back_to_the_last_epoch(tmp_path: Path) -> None:
    selector = EpochSelector(tmp_path, hp=Hyperparameters(), report_metric="accuracy",
                             eval_split="train", reporter=RecordingReporter())
    selector.observe(1, 4, {"eval_accuracy": 0.9}, _linear(1))

    chosen = selector.select(_linear(2), [{"epoch": 2, "eval_accuracy": 0.7}])

    assert (chosen["mode"], chosen["requested"], chosen["epoch"]) == ("last", "best", 2)
    assert "no validation file" in chosen["reason"]
    assert not (tmp_path / BEST_DIR).exists()
