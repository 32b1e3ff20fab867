"""The optimizer's schedule (`make_optimizer`): warm-up, then linear or cosine decay to zero, as
the learning rate `fit` logs every step; gradients clipped to `max_grad_norm`."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from distillation.config import Hyperparameters
from distillation.training.loop import fit, make_optimizer
from tests.factories.reporting import RecordingReporter


@pytest.mark.parametrize("scheduler", ["linear", "cosine"])
def test_warm_up_then_decay_to_zero(scheduler: str) -> None:
    # Given 8 optimizer steps at peak 0.1 with a quarter of them (2) warming up
    hp = Hyperparameters(lr_scheduler=scheduler, warmup_ratio=0.25)  # type: ignore[arg-type]
    optimizer, schedule = make_optimizer([nn.Linear(2, 2)], hp, learning_rate=0.1, total_steps=8)

    # When the schedule steps through the run
    rates = []
    for _ in range(8):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()

    # Then it climbs from 0 over the warm-up and falls to 0 by the last step, as each shape says
    progress = [(step - 2) / 6 for step in range(2, 8)]
    decay = [1 - p for p in progress] if scheduler == "linear" else \
        [0.5 * (1 + math.cos(math.pi * p)) for p in progress]
    assert rates == pytest.approx([0.0, 0.05] + [0.1 * d for d in decay])
    assert schedule.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_fit_logs_the_rate_of_every_step_and_clips_the_gradient() -> None:
    # Given a model whose loss has a huge gradient, and max_grad_norm 1
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    features: list[dict[str, Any]] = [{"input_ids": [1], "x": [1.0]} for _ in range(4)]

    def collate(rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        return {"x": torch.tensor([r["x"] for r in rows])}

    def loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return (1000.0 * model(batch["x"])).mean(), {}

    reporter = RecordingReporter()
    norms: list[float] = []

    def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        assert model.weight.grad is not None
        norms.append(float(model.weight.grad.norm()))

    # When fit trains it 4 steps (the norm of the gradient read just before each update)
    hp = Hyperparameters(warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
                         log_every_steps=1)
    handle = register_optimizer_step_pre_hook(before_step)
    try:
        fit(modules=[model], features=features, collator=collate, compute_loss=loss, hp=hp,
            epochs=1, batch_size=1, learning_rate=0.1, device=torch.device("cpu"),
            reporter=reporter, stage="distill")
    finally:
        handle.remove()

    # Then each update saw the gradient (1000) clipped to norm 1, and every step logged the
    # rate it ended on (linear decay over 4 steps, no warm-up)
    assert norms == pytest.approx([1.0] * 4, rel=1e-4)
    rates = [data["learning_rate"] for _, data in reporter.metric_events]
    assert rates == pytest.approx([0.075, 0.05, 0.025, 0.0])
