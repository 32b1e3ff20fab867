"""reverse_kl and jsd pinned on fixed tensors; temperature and weight schedules; their checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from app.jobs.schemas import DistillationIn, HyperparametersIn, LossIn
from distillation.config import Hyperparameters, LossSpec, NullReporter
from distillation.losses.functions import (
    JSDLoss,
    KLLoss,
    LossInputs,
    ReverseKLLoss,
    build_losses,
    check_losses,
)
from distillation.training.loop import fit
from distillation.training.schedules import Schedule, step_progress

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
T = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])


@dataclass
class Shape:
    num_layers: int = 2
    hidden_size: int = 8
    num_heads: int = 2


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(x / temperature) for x in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _rows(temperature: float) -> list[tuple[list[float], list[float]]]:
    """(teacher p, student q) per row, softened by `temperature`."""
    return [(_softmax(t, temperature), _softmax(s, temperature))
            for s, t in zip(S.tolist(), T.tolist(), strict=True)]


def test_reverse_kl_matches_hand_computed_value() -> None:
    # Given the student's and the teacher's logits at T = 2
    # When the reverse KL is computed
    value = ReverseKLLoss(2.0)(LossInputs(S, T)).item()
    # Then it is T² · mean over rows of Σ q (log q − log p)
    expected = sum(_kl(q, p) for p, q in _rows(2.0)) / 2 * 4
    assert value == pytest.approx(expected, rel=1e-5)
    assert ReverseKLLoss(2.0)(LossInputs(T, T)).item() == pytest.approx(0.0, abs=1e-6)
    # and it differs from the forward KL on the same logits (KL is not symmetric)
    assert value != pytest.approx(KLLoss(2.0)(LossInputs(S, T)).item(), rel=1e-3)


def test_reverse_kl_pinned_value() -> None:
    # T = 1, one row: q = softmax([0, 0]) = (.5, .5), p = softmax([ln 3, 0]) = (.75, .25)
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # 0.143841...
    assert ReverseKLLoss(1.0)(LossInputs(s, t)).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.1438410362, rel=1e-9)


@pytest.mark.parametrize("beta", [0.5, 0.2, 0.9])
def test_jsd_matches_hand_computed_value(beta: float) -> None:
    expected = 0.0
    for p, q in _rows(2.0):
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q, strict=True)]
        expected += beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    expected = expected / 2 * 4

    value = JSDLoss(2.0, beta)(LossInputs(S, T)).item()

    assert value == pytest.approx(expected, rel=1e-5)
    assert JSDLoss(2.0, beta)(LossInputs(T, T)).item() == pytest.approx(0.0, abs=1e-6)


def test_jsd_pinned_value_and_bound() -> None:
    # One row, T = 1, beta = 0.5: p = (.75, .25), q = (.5, .5), m = (.625, .375)
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.5 * (0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375)) \
        + 0.5 * (0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375))
    assert JSDLoss(1.0)(LossInputs(s, t)).item() == pytest.approx(expected, rel=1e-5)
    # Symmetric JSD is at most log 2 per row, however far apart the logits are.
    far = JSDLoss(1.0)(LossInputs(torch.tensor([[50.0, -50.0]]), torch.tensor([[-50.0, 50.0]])))
    assert far.item() == pytest.approx(math.log(2), rel=1e-5)


def test_new_losses_give_gradients_to_the_student_only() -> None:
    student = S.clone().requires_grad_(True)
    teacher = T.clone().requires_grad_(True)
    for loss in (ReverseKLLoss(2.0), JSDLoss(2.0, 0.3)):
        loss(LossInputs(student, teacher.detach())).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_build_losses_knows_the_new_types() -> None:
    composite = build_losses([LossSpec("reverse_kl"), LossSpec("jsd", beta=0.25)], 2.0,
                             Shape(), Shape())
    assert composite.names == ["reverse_kl", "jsd"]
    jsd = composite.terms[1]
    assert isinstance(jsd, JSDLoss) and jsd.beta == 0.25


def test_schedule_values() -> None:
    linear = Schedule(4.0, 1.0)
    assert [linear.at(p) for p in (0.0, 0.5, 1.0)] == [4.0, 2.5, 1.0]
    assert linear.at(-1.0) == 4.0 and linear.at(2.0) == 1.0  # clamped
    assert Schedule(3.0).at(0.7) == 3.0 and Schedule(3.0).constant
    # the first optimizer step is 0, the last is 1
    assert [step_progress(s, 5) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert step_progress(0, 1) == 0.0


def test_composite_uses_scheduled_temperature_and_weights() -> None:
    # Given kl with a linear temperature 4 → 1 and a ce weight ramping 0 → 1
    composite = build_losses([LossSpec("kl", 1.0), LossSpec("ce", 0.0, weight_end=1.0)], 4.0,
                             Shape(), Shape(), temperature_end=1.0)
    labels = torch.tensor([1, 2])
    ce = torch.nn.functional.cross_entropy(S, labels).item()
    for progress, temperature, ce_weight in ((0.0, 4.0, 0.0), (0.5, 2.5, 0.5), (1.0, 1.0, 1.0)):
        # When the loss is computed at that point of training
        total, terms = composite(LossInputs(S, T, labels=labels), progress=progress)
        # Then the kl term uses the scheduled temperature and the weights are the scheduled ones
        kl = KLLoss(temperature)(LossInputs(S, T)).item()
        assert terms["kl"] == pytest.approx(kl, rel=1e-6)
        assert composite.weights == [1.0, ce_weight]
        assert total.item() == pytest.approx(kl + ce_weight * ce, rel=1e-6)


def test_fit_moves_the_schedule_every_optimizer_step() -> None:
    # Given 5 one-example batches (5 optimizer steps) and a temperature going 3 → 1
    composite = build_losses([LossSpec("kl", 2.0, weight_end=0.0)], 3.0, Shape(), Shape(),
                             temperature_end=1.0)
    model = nn.Linear(2, 3)
    seen: list[tuple[float, float]] = []

    def compute_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        seen.append((composite.terms[0].temperature, composite.weights[0]))
        return composite(LossInputs(model(batch["x"]), batch["t"]))

    features: list[dict[str, Any]] = [{"input_ids": [1], "x": [float(i), 1.0],
                                       "t": [1.0, 0.0, -1.0]} for i in range(5)]

    def collate(rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        return {k: torch.tensor([r[k] for r in rows]) for k in ("x", "t")}

    # When fit trains on them
    fit(modules=[model, composite], features=features, collator=collate,
        compute_loss=compute_loss, hp=Hyperparameters(warmup_ratio=0.0), epochs=1, batch_size=1,
        learning_rate=1e-2, device=torch.device("cpu"), reporter=NullReporter(), stage="distill",
        on_progress=composite.set_progress)

    # Then step 0 has the start values, the middle step halfway values and the last the ends
    assert seen == [(3.0, 2.0), (2.5, 1.5), (2.0, 1.0), (1.5, 0.5), (1.0, 0.0)]


def test_checks_name_the_bad_schedule_and_beta_fields() -> None:
    problems = check_losses(
        [LossSpec("jsd", beta=1.0), LossSpec("kl", weight_end=-1.0)], 2.0,
        student_layers=1, teacher_layers=2, temperature_end=0.0,
    )
    params = {param for param, _ in problems}
    assert params == {"distillation.temperature_end", "distillation.losses[0].beta",
                      "distillation.losses[1].weight_end"}
    # A weight that starts at zero and ramps up is a usable configuration.
    assert check_losses([LossSpec("kl", 0.0, weight_end=1.0)], 2.0, student_layers=1,
                        teacher_layers=2) == []


def test_api_schema_takes_the_new_fields() -> None:
    loss = LossIn(type="jsd", beta=0.3, weight_end=0.0)
    assert (loss.beta, loss.weight_end) == (0.3, 0.0)
    assert DistillationIn(temperature_end=1.0).temperature_end == 1.0
    assert HyperparametersIn().cache_teacher is True
    for bad in ({"type": "jsd", "beta": 0.0}, {"type": "jsd", "beta": 1.0},
                {"type": "kl", "weight_end": -1.0}):
        with pytest.raises(ValidationError):
            LossIn(**bad)
    with pytest.raises(ValidationError):
        DistillationIn(temperature_end=0.0)
