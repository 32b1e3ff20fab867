"""`hyperparameters.time_budget_minutes`: the plan's arithmetic on a made-up speed, the
measurement on copies, and jobs on tiny models that plan, report and reuse their plan."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from distill_cli.report import report_table
from distillation.config import Hyperparameters, JobConfig
from distillation.engine import run_job
from distillation.layout import time_budget_path
from distillation.training.budget import (
    BudgetPlan,
    BudgetTooSmall,
    Speed,
    load_plan,
    measure_training,
    plan_budget,
    save_plan,
)
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records
from tests.factories.reporting import RecordingReporter

ONE_SECOND_STEPS = Speed(step_seconds=1.0, steps=8, samples_per_s=8.0)


def _plan(*, budget_s: float, examples: int, epochs: int = 20, extra: int = 0,
          max_steps: int | None = None) -> BudgetPlan:
    """Batches of 8 at one second a step, 60 s spent, 60 s kept for the stages after, each
    epoch's evaluation 5 s."""
    hp = Hyperparameters(epochs=epochs, batch_size=8, max_steps=max_steps)
    return plan_budget(hp=hp, budget_minutes=budget_s / 60, spent_s=60.0, speed=ONE_SECOND_STEPS,
                       examples=examples, extra_examples=extra, eval_s=5.0, reserve_s=60.0)


def test_the_whole_epochs_that_fit_are_planned() -> None:
    # Given 120 s left, and epochs of 10 steps (10 s) and a 5 s evaluation
    plan = _plan(budget_s=240, examples=80)

    # Then 8 epochs fit, and run whole
    assert (plan.epochs, plan.steps, plan.max_steps, plan.warning) == (8, 80, None, False)
    assert plan.estimated_s == 8 * 15 and plan.steps_per_epoch == 10 and plan.epoch_s == 10
    assert "8 whole epochs fit" in plan.reason
    assert plan.hyperparameters(Hyperparameters(epochs=20)).epochs == 8
    message = plan.message()
    assert message.startswith("Time budget 4 min: 1.0 min spent before distillation, one epoch "
                              "takes ~0.2 min (8.0 samples/s measured over 8 steps), evaluation "
                              "~5 s per epoch, 1.0 min kept for evaluation and export: planned "
                              "8 epochs")


def test_the_epochs_asked_for_are_the_ceiling() -> None:
    plan = _plan(budget_s=600, examples=80, epochs=3)

    assert (plan.epochs, plan.steps) == (3, 30)
    assert "32 epochs would fit; 3 is the most this job runs" in plan.reason


def test_max_steps_still_ends_the_run() -> None:
    plan = _plan(budget_s=600, examples=80, max_steps=25)

    assert (plan.epochs, plan.steps, plan.max_steps) == (3, 25, 25)


def test_less_than_an_epoch_caps_the_steps_with_a_warning() -> None:
    # Given epochs of 100 steps and 60 s left: 55 steps and the evaluation fit
    plan = _plan(budget_s=180, examples=800)

    assert (plan.epochs, plan.max_steps, plan.steps, plan.warning) == (1, 55, 55, True)
    assert "planned 55 of its 100 optimizer steps" in plan.reason
    hp = plan.hyperparameters(Hyperparameters(epochs=20))
    assert (hp.epochs, hp.max_steps) == (1, 55)


def test_less_than_an_epoch_drops_transfer_examples_before_cutting_the_epoch() -> None:
    # Given 100 labelled and 700 transfer or augmented examples, and room for 55 steps
    plan = _plan(budget_s=180, examples=800, extra=700)

    # Then one whole epoch over the labelled ones and 340 of the others
    assert (plan.epochs, plan.max_steps, plan.examples, plan.steps) == (1, None, 440, 55)
    assert "the 100 labelled examples and 340 of the 700 transfer and augmented" in plan.reason


def test_a_budget_too_small_fails_naming_the_numbers() -> None:
    # Given room for 15 steps of an epoch of 100 (under the 20 that are worth it)
    with pytest.raises(BudgetTooSmall) as error:
        _plan(budget_s=140, examples=800)

    message = str(error.value)
    assert "time budget of 2.33333 min is too small" in message
    assert "1.0 min were spent before distillation" in message
    assert "one epoch takes ~1.7 min (100 optimizer steps of ~1.00 s" in message
    assert "room for 15 optimizer steps; at least 20 are needed" in message


def test_a_budget_already_spent_fails() -> None:
    with pytest.raises(BudgetTooSmall, match="room for 0 optimizer steps"):
        _plan(budget_s=30, examples=80)


def test_the_plan_is_kept_for_the_next_attempt(tmp_path: Path) -> None:
    plan = _plan(budget_s=240, examples=80)

    save_plan(tmp_path, plan)

    assert load_plan(tmp_path, 4.0) == plan
    assert load_plan(tmp_path, 5.0) is None  # another budget plans again
    assert load_plan(tmp_path / "nowhere", 4.0) is None


def test_measuring_leaves_the_weights_and_the_random_state_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    features = [{"input_ids": [1, 2], "x": torch.randn(4).tolist()} for _ in range(20)]

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return {"x": torch.tensor([r["x"] for r in rows])}

    def loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return model(batch["x"]).pow(2).mean(), {}

    expected = torch.get_rng_state()
    speed = measure_training(modules=[model], compute_loss=loss, features=features,
                             collator=collate, hp=Hyperparameters(batch_size=4),
                             device=torch.device("cpu"), on_batch=lambda: None)

    assert speed.steps == 8 and speed.step_seconds > 0 and speed.samples_per_s > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), expected)


# -- jobs ------------------------------------------------------------------------------------------


def _job(teacher: Path, tmp: Path, **hp: Any) -> JobConfig:
    return toy_job(teacher, tmp, sentiment_records(32), hyperparameters=Hyperparameters(
        batch_size=8, learning_rate=5e-3, warmup_ratio=0.0, log_every_steps=2,
        eval_batch_size=16, **hp))


def test_a_job_with_a_budget_plans_runs_and_reports(tiny_teacher_dir: Path,
                                                     tmp_path: Path) -> None:
    # Given the same job with a budget of 30 min (two epochs asked: far less than fits) and none
    budgeted, plain = (_job(tiny_teacher_dir, tmp_path / name, epochs=2, time_budget_minutes=m)
                       for name, m in (("budget", 30), ("plain", None)))
    recorder = RecordingReporter()

    result = run_job(budgeted, recorder)
    unbudgeted = run_job(plain, RecordingReporter())

    # Then it planned the 2 epochs asked for, and said so before training
    budget = result.report["time_budget"]
    assert budget["budget_minutes"] == 30 and budget["planned"]["epochs"] == 2
    assert budget["ran"]["epochs"] == 2 and budget["ran"]["steps"] == budget["planned"]["steps"] == 8
    assert set(budget["ran"]["stage_minutes"]) >= {"prepare_data", "distill", "evaluate", "export"}
    assert budget["ran"]["total_seconds"] > 0 and budget["measured"]["steps"] >= 1
    # both rounded from the same clock: minutes to 0.01, seconds to 0.01
    assert abs(budget["ran"]["total_minutes"] - budget["ran"]["total_seconds"] / 60) <= 0.0051
    assert "is the most this job runs" in budget["reason"]
    planned = [(text, data) for text, data in recorder.events
               if data and "time_budget" in data]
    assert len(planned) == 1 and planned[0][0].startswith("Time budget 30 min: ")
    assert "planned 2 epochs" in planned[0][0]
    assert "## Time budget" in (budgeted.output_dir / "README.md").read_text()
    assert json.loads((budgeted.output_dir / "report.json").read_text())["time_budget"] == budget
    assert json.loads(time_budget_path(budgeted.work_dir).read_text())["epochs"] == 2
    caption = str(report_table({"report": result.report}).caption)
    assert "time budget 30 min: planned 2 epochs (8 steps), ran 2 (8 steps)" in caption
    # and the measurement left the run as it would have been: the same losses, step by step
    assert result.train_loss == unbudgeted.train_loss
    assert "time_budget" not in unbudgeted.report


def test_a_resumed_job_keeps_the_first_attempts_plan(tiny_teacher_dir: Path,
                                                     tmp_path: Path) -> None:
    # Given a job whose first attempt planned one epoch cut to 3 steps
    config = _job(tiny_teacher_dir, tmp_path, epochs=5, time_budget_minutes=30)
    first = _plan(budget_s=1800, examples=32)
    save_plan(config.work_dir, replace(first, epochs=1, max_steps=3, steps=3))
    recorder = RecordingReporter()

    result = run_job(config, recorder)

    # Then it runs that plan, measuring nothing again
    assert result.report["optimizer_steps"] == 3
    assert result.report["time_budget"]["planned"]["steps"] == 3
    assert any("keeping the plan of the job's first attempt" in text
               for text, _ in recorder.events)


def test_a_job_whose_budget_is_spent_before_training_fails_clearly(tiny_teacher_dir: Path,
                                                                   tmp_path: Path) -> None:
    config = _job(tiny_teacher_dir, tmp_path, epochs=2, time_budget_minutes=0.01)

    with pytest.raises(BudgetTooSmall, match=r"time budget of 0.01 min is too small: .* were "
                                             r"spent before distillation, one epoch takes"):
        run_job(config, RecordingReporter())
    assert not (config.output_dir / "report.json").exists()
