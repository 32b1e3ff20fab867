"""Loss terms pinned on fixed tensors, and the checks the API runs on loss settings."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from distillation.config import LossSpec
from distillation.losses.functions import (
    AttentionMSELoss,
    CELoss,
    CosineLoss,
    HiddenMSELoss,
    KLLoss,
    LogitMarginLoss,
    LossInputs,
    MSELogitsLoss,
    build_losses,
    check_losses,
    logit_margins,
)

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
T = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])


@dataclass
class Shape:
    num_layers: int
    hidden_size: int
    num_heads: int


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def test_kl_matches_explicit_formula() -> None:
    temperature = 2.0
    expected = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist(), strict=True):
        p = _softmax([x / temperature for x in t_row])
        q = _softmax([x / temperature for x in s_row])
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    expected = expected / 2 * temperature**2

    value = KLLoss(temperature)(LossInputs(S, T))

    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert KLLoss(temperature)(LossInputs(T, T)).item() == pytest.approx(0.0, abs=1e-6)


def test_ce_matches_explicit_formula() -> None:
    labels = torch.tensor([1, 2])
    expected = -(math.log(_softmax(S[0].tolist())[1]) + math.log(_softmax(S[1].tolist())[2])) / 2
    assert CELoss()(LossInputs(S, T, labels=labels)).item() == pytest.approx(expected, rel=1e-6)


def test_mse_logits() -> None:
    expected = sum((a - b) ** 2 for a, b in zip(S.flatten().tolist(), T.flatten().tolist(),
                                                strict=True)) / 6
    assert MSELogitsLoss()(LossInputs(S, T)).item() == pytest.approx(expected, rel=1e-6)


def test_logit_margins_and_loss_value() -> None:
    # margins: logit minus the mean of the other logits; for two classes, the difference
    assert logit_margins(torch.tensor([[1.0, 2.0, 0.5]])).tolist() == [[-0.25, 1.25, -1.0]]
    assert logit_margins(torch.tensor([[3.0, 1.0]])).tolist() == [[2.0, -2.0]]
    temperature, weights = 2.0, [1.0, 2.0, 0.5]
    expected = 0.0
    for s_row, t_row in zip(S.tolist(), T.tolist(), strict=True):
        for i in range(3):
            s_i = (s_row[i] - (sum(s_row) - s_row[i]) / 2) / temperature
            t_i = (t_row[i] - (sum(t_row) - t_row[i]) / 2) / temperature
            expected += weights[i] * temperature**2 * math.log(1 + math.exp(-s_i * t_i))
    expected /= 2

    value = LogitMarginLoss(temperature, weights)(LossInputs(S, T))

    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_logit_loss_rewards_agreement() -> None:
    loss = LogitMarginLoss(1.0)
    teacher = torch.tensor([[2.0, -1.0, 0.0]])
    agree = loss(LossInputs(teacher.clone(), teacher)).item()
    disagree = loss(LossInputs(-teacher, teacher)).item()
    assert agree < disagree

    # Given a student that starts disagreeing, when it follows the gradient, the loss falls.
    student = (-teacher).clone().requires_grad_(True)
    optimizer = torch.optim.SGD([student], lr=0.5)
    values = []
    for _ in range(20):
        value = loss(LossInputs(student, teacher))
        values.append(value.item())
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert values[-1] < values[0] / 2
    assert (logit_margins(student.detach()).sign() == logit_margins(teacher).sign()).all()


def test_hidden_mse_masks_padding_and_trains_projection() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0]])
    student = [torch.zeros(1, 3, 4), torch.randn(1, 3, 4)]
    teacher = [torch.zeros(1, 3, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8)]
    loss = HiddenMSELoss({0: 1}, student_width=4, teacher_width=8)

    value = loss(LossInputs(S, T, attention_mask=mask, student_hidden=student,
                            teacher_hidden=teacher))
    value.backward()

    projection = loss.projections["0"]
    assert isinstance(projection, torch.nn.Linear)
    expected = ((projection(student[1]) - teacher[2]) ** 2)[:, :2].mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    # The padded position does not count: changing it changes nothing.
    teacher[2][:, 2] += 100.0
    again = loss(LossInputs(S, T, attention_mask=mask, student_hidden=student,
                            teacher_hidden=teacher))
    assert again.item() == pytest.approx(value.item(), rel=1e-6)


def test_attention_mse_equal_and_different_heads() -> None:
    mask = torch.tensor([[1, 1, 0]])
    a = torch.softmax(torch.arange(18.0).reshape(1, 2, 3, 3) / 5, dim=-1)
    b = torch.full((1, 2, 3, 3), 1 / 3)
    same = AttentionMSELoss({0: 0})(LossInputs(S, T, attention_mask=mask,
                                               student_attentions=[a], teacher_attentions=[b]))
    assert same.item() == pytest.approx(((a - b) ** 2)[:, :, :2, :2].mean().item(), rel=1e-5)

    one_head = torch.full((1, 1, 3, 3), 1 / 3)
    mixed = AttentionMSELoss({0: 0})(LossInputs(S, T, attention_mask=mask,
                                                student_attentions=[a],
                                                teacher_attentions=[one_head]))
    expected = ((a.mean(1, keepdim=True) - one_head) ** 2)[:, :, :2, :2].mean()
    assert mixed.item() == pytest.approx(expected.item(), rel=1e-5)


def test_cosine_value_and_projection_gradient() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [5.0, 5.0]]])
    cls = CosineLoss(2, 2, pooling="cls")(LossInputs(S, T, student_hidden=[hidden],
                                                     teacher_hidden=[teacher]))
    assert cls.item() == pytest.approx(1.0)  # [1, 0] is orthogonal to [0, 1]
    mean = CosineLoss(2, 2, pooling="mean")(LossInputs(
        S, T, attention_mask=torch.tensor([[1, 0]]), student_hidden=[hidden],
        teacher_hidden=[teacher]))
    assert mean.item() == pytest.approx(1.0)  # the padded token is left out of the mean

    torch.manual_seed(0)
    loss = CosineLoss(2, 3)
    value = loss(LossInputs(S, T, student_hidden=[hidden], teacher_hidden=[torch.randn(1, 2, 3)]))
    value.backward()
    assert isinstance(loss.projection, torch.nn.Linear)
    assert loss.projection.weight.grad is not None
    assert loss.projection.weight.grad.abs().sum() > 0


def test_build_losses_weighted_sum_and_terms() -> None:
    specs = [LossSpec("kl", 0.5), LossSpec("ce", 0.25), LossSpec("kl", 1.0)]
    composite = build_losses(specs, 2.0, Shape(1, 4, 2), Shape(2, 8, 2))
    labels = torch.tensor([1, 2])

    total, terms = composite(LossInputs(S, T, labels=labels))

    kl = KLLoss(2.0)(LossInputs(S, T)).item()
    ce = CELoss()(LossInputs(S, T, labels=labels)).item()
    assert set(terms) == {"kl", "ce", "kl_2"}
    assert total.item() == pytest.approx(1.5 * kl + 0.25 * ce, rel=1e-5)
    assert not composite.needs_hidden_states and not composite.needs_attentions

    layered = build_losses([LossSpec("hidden_mse"), LossSpec("attention_mse")], 1.0,
                           Shape(2, 4, 2), Shape(4, 8, 2))
    assert layered.needs_hidden_states and layered.needs_attentions
    hidden = layered.terms[0]
    assert isinstance(hidden, HiddenMSELoss) and hidden.layer_map == {0: 1, 1: 3}
    assert sum(p.numel() for p in layered.parameters()) == 2 * (4 * 8 + 8)


def test_check_losses_reports_each_problem() -> None:
    assert check_losses([LossSpec("kl"), LossSpec("ce")], 2.0, student_layers=2,
                        teacher_layers=4) == []
    problems = dict(check_losses(
        [LossSpec("kl"), LossSpec("hidden_mse", layer_map={7: 0}),
         LossSpec("attention_mse", layer_map={0: 9}), LossSpec("nope")],
        0.0, student_layers=4, teacher_layers=6,
    ))
    assert "positive" in problems["distillation.temperature"]
    assert problems["distillation.losses[1].layer_map"] == (
        "distillation.losses[1].layer_map: student layer 7 does not exist (student has 4 layers)"
    )
    assert "teacher layer 9 does not exist (teacher has 6 layers)" in \
        problems["distillation.losses[2].layer_map"]
    assert "unknown loss 'nope'" in problems["distillation.losses[3].type"]
    assert check_losses([{"type": "kl", "weight": -1}], 1.0, student_layers=1,
                        teacher_layers=1)[0][0] == "distillation.losses[0].weight"
    assert check_losses([], 1.0, student_layers=1, teacher_layers=1)[0][0] == "distillation.losses"
    with pytest.raises(ValueError, match=r"losses\[0\]\.layer_map: student layer 3"):
        build_losses([LossSpec("hidden_mse", layer_map={3: 0})], 1.0, Shape(2, 4, 2),
                     Shape(2, 4, 2))


def test_gradients_reach_the_student_as_each_formula_says_and_never_the_teacher() -> None:
    # Given logits for 2 rows of 3 classes, the teacher's tracked by autograd too
    labels = torch.tensor([1, 2])
    n, c, temperature = 2, 3, 2.0
    expected = {
        # d/ds T²·KL(p_t^T ‖ p_s^T), batch mean: T · (softmax(s/T) − softmax(t/T)) / N
        "kl": temperature * (torch.softmax(S / temperature, -1)
                             - torch.softmax(T / temperature, -1)) / n,
        # d/ds CE: (softmax(s) − onehot(y)) / N
        "ce": (torch.softmax(S, -1) - torch.nn.functional.one_hot(labels, c)) / n,
        # d/ds mean (s − t)²: 2 (s − t) / (N·C)
        "mse_logits": 2 * (S - T) / (n * c),
    }
    for name, loss in (("kl", KLLoss(temperature)), ("ce", CELoss()),
                       ("mse_logits", MSELogitsLoss())):
        student = S.clone().requires_grad_(True)
        teacher = T.clone().requires_grad_(True)
        # When the term's value is backpropagated
        loss(LossInputs(student, teacher, labels=labels)).backward()
        # Then the student's gradient is the formula's and the teacher gets none
        assert student.grad is not None
        torch.testing.assert_close(student.grad, expected[name], msg=name)
        assert teacher.grad is None, name


def test_attention_mse_gradient_is_the_formulas_on_real_pairs_and_the_teacher_gets_none() -> None:
    # Given one layer's attention maps (2 rows, 2 heads, 3 tokens), the second row's last token
    # padding, the teacher's tracked by autograd too
    generator = torch.Generator().manual_seed(0)
    s_map = torch.softmax(torch.randn(2, 2, 3, 3, generator=generator), -1)
    t_map = torch.softmax(torch.randn(2, 2, 3, 3, generator=generator), -1)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    student, teacher = s_map.clone().requires_grad_(True), t_map.clone().requires_grad_(True)

    # When the term is backpropagated
    AttentionMSELoss({0: 0})(LossInputs(torch.zeros(2, 2), torch.zeros(2, 2),
                                        student_attentions=[student], teacher_attentions=[teacher],
                                        attention_mask=mask)).backward()

    # Then d/dA_s = 2 (A_s − A_t) on the real (query, key) pairs / (real pairs × heads), zero on
    # pairs with a padded query or key, and nothing reaches the teacher
    pairs = (mask[:, :, None] * mask[:, None, :]).unsqueeze(1).float()
    expected = 2 * (s_map - t_map) * pairs / (pairs.sum() * 2)
    assert student.grad is not None
    torch.testing.assert_close(student.grad, expected)
    assert float(student.grad[1, :, 2, :].abs().sum()) == 0.0
    assert teacher.grad is None


def test_hidden_state_terms_never_send_the_teacher_a_gradient() -> None:
    generator = torch.Generator().manual_seed(1)
    layers = [torch.randn(2, 3, 4, generator=generator) for _ in range(2)]
    for loss in (HiddenMSELoss({0: 0}, 4, 4), CosineLoss(4, 4, pooling="mean")):
        student = [h.clone().requires_grad_(True) for h in layers]
        teacher = [(h + 1).requires_grad_(True) for h in layers]
        loss(LossInputs(torch.zeros(2, 2), torch.zeros(2, 2), student_hidden=student,
                        teacher_hidden=teacher, attention_mask=torch.ones(2, 3))).backward()
        assert any(h.grad is not None for h in student), type(loss).__name__
        assert all(h.grad is None for h in teacher), type(loss).__name__
