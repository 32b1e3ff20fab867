"""The generalized JSD of on-policy distillation (its endpoints are the two KLs exactly) and its
normalisation per answer token across a gradient-accumulation group."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from distillation.config import Hyperparameters, JobConfig, NullReporter, OnPolicySpec
from distillation.engine import DistillLoss
from distillation.losses.functions import JSDLoss, KLLoss, LossInputs, ReverseKLLoss
from distillation.methods.checks import check_method
from distillation.methods.on_policy import OnPolicyMethod, answer_tokens
from distillation.tasks import CAUSAL_LM
from distillation.tasks.causal_lm import answered
from distillation.tasks.token_data import TokenCollator
from distillation.training.loop import fit, row_weights

CPU = torch.device("cpu")


def _logits(seed: int, rows: int = 6, vocab: int = 11) -> Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gjsd_is_the_forward_kl_at_beta_0_and_the_reverse_kl_at_beta_1(
    temperature: float,
) -> None:
    # Given a student's and a teacher's logits over a vocabulary
    inputs = LossInputs(_logits(0), _logits(1))
    # When the generalized JSD is taken at its endpoints
    at_0 = JSDLoss(temperature, 0.0)(inputs).item()
    at_1 = JSDLoss(temperature, 1.0)(inputs).item()
    # Then they are the forward KL(teacher ‖ student) and the reverse KL(student ‖ teacher)
    assert at_0 == pytest.approx(KLLoss(temperature)(inputs).item(), rel=1e-6)
    assert at_1 == pytest.approx(ReverseKLLoss(temperature)(inputs).item(), rel=1e-6)
    assert at_0 != pytest.approx(at_1, rel=1e-2)  # the two KLs differ on these logits
    # and next to each endpoint the mixture form is that KL scaled by the distance to it
    # (up to terms of the distance squared)
    eps = 1e-4
    assert JSDLoss(temperature, eps)(inputs).item() / eps == pytest.approx(at_0, rel=3e-2)
    assert JSDLoss(temperature, 1 - eps)(inputs).item() / eps == pytest.approx(at_1, rel=3e-2)


def test_gjsd_in_between_is_finite_non_negative_and_zero_on_equal_distributions() -> None:
    s, t = _logits(2), _logits(3)
    far = LossInputs(torch.tensor([[60.0, -60.0, 0.0]]), torch.tensor([[-60.0, 60.0, 0.0]]))
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        value = JSDLoss(1.0, beta)(LossInputs(s, t)).item()
        assert math.isfinite(value) and value > 0
        assert JSDLoss(1.0, beta)(LossInputs(t, t)).item() == pytest.approx(0.0, abs=1e-6)
        assert math.isfinite(JSDLoss(1.0, beta)(far).item())
    # Bounded by log 2 at β = 0.5 and T = 1 (the symmetric JSD), even on opposite certainties
    assert JSDLoss(1.0, 0.5)(far).item() <= math.log(2) + 1e-6
    with pytest.raises(ValueError, match="between 0 and 1"):
        JSDLoss(1.0, 1.5)


def test_on_policy_settings_are_checked_by_field() -> None:
    from distillation.config import GenerationSpec

    problems = check_method(task=CAUSAL_LM, method="on-policy",
                            on_policy=OnPolicySpec(lambda_=1.5, beta=-0.1),
                            generation=GenerationSpec(num_samples=2), devices=2)
    assert {param for param, _ in problems} == {
        "distillation.lambda", "distillation.beta", "generation.num_samples",
        "hyperparameters.devices"}
    assert check_method(task="seq2seq", method="sequence", on_policy=OnPolicySpec(),
                        generation=GenerationSpec())[0][0] == "distillation.method"
    assert check_method(task=CAUSAL_LM, method="on-policy", on_policy=OnPolicySpec(0.0, 1.0),
                        generation=GenerationSpec()) == []


def test_row_weights_make_the_group_a_mean_over_all_its_rows() -> None:
    # Batch means 1.0 over 1 row and 4.0 over 3 rows, accumulated over 2 batches
    weights = row_weights([1, 3], [1.0, 1.0], accum=2)
    assert sum(m * w / 2 for m, w in zip([1.0, 4.0], weights, strict=True)) == pytest.approx(
        (1.0 * 1 + 4.0 * 3) / 4)


def _llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=24, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(config)


def _accumulated_gradients(*, batch_size: int, accum: int, per_token: bool
                           ) -> dict[str, Tensor]:
    """The gradient of the first optimizer step of an on-policy loss on four examples whose
    answers have 1, 2, 6 and 9 tokens, summed from what every backward pass contributed."""
    student, teacher = _llama(0), _llama(1).eval().requires_grad_(False)
    features = [answered([5, 6, 7], list(range(2, 2 + n))) for n in (1, 2, 6, 9)]
    config = JobConfig(task=CAUSAL_LM, teacher_path=None, student=None, train_file=None,  # type: ignore[arg-type]
                       output_dir=None, work_dir=None, temperature=1.0,  # type: ignore[arg-type]
                       on_policy=OnPolicySpec(beta=0.5))
    losses = OnPolicyMethod().losses(config, None, student, teacher)  # type: ignore[arg-type]
    compute_loss = DistillLoss(task=CAUSAL_LM, student=student, losses=losses, cache=None,
                               teacher=teacher, teacher_prefix="", hidden=False,
                               attentions=False)
    seen: dict[str, Tensor] = {}
    for name, param in student.named_parameters():
        seen[name] = torch.zeros_like(param)
        param.register_hook(lambda grad, name=name: seen[name].add_(grad))  # type: ignore[misc]
    hp = Hyperparameters(epochs=1, batch_size=batch_size, gradient_accumulation_steps=accum,
                         max_steps=1, max_grad_norm=0.0, warmup_ratio=0.0)
    fit(modules=[student, losses], features=features, collator=TokenCollator(0),
        compute_loss=compute_loss, hp=hp, epochs=1, batch_size=batch_size, learning_rate=1e-3,
        device=CPU, reporter=NullReporter(), stage="distill",
        loss_rows=answer_tokens if per_token else None)
    return seen


def test_on_policy_loss_is_a_mean_per_answer_token_across_the_accumulation_group() -> None:
    # Given one batch of the four examples, and the same four as two batches of two
    # (the long answers together, the short ones together) with their gradients accumulated
    whole = _accumulated_gradients(batch_size=4, accum=1, per_token=True)
    halves = _accumulated_gradients(batch_size=2, accum=2, per_token=True)
    # Then the gradients are the same: each answer token counts once, wherever it was
    for name, grad in whole.items():
        assert grad.abs().sum() > 0
        torch.testing.assert_close(halves[name], grad, rtol=1e-4, atol=1e-7)
    # whereas a mean of the two batches' means weighs the short answers' tokens more
    naive = _accumulated_gradients(batch_size=2, accum=2, per_token=False)
    assert any(not torch.allclose(naive[name], grad, rtol=1e-3, atol=1e-6)
               for name, grad in whole.items())


def test_a_group_is_prepared_before_its_first_loss_with_the_last_steps_weights() -> None:
    # Given a loop of two accumulation groups of two batches, with a batch hook (where the
    # student samples) and a loss that both write down what they see
    student = nn.Linear(1, 1, bias=False)
    events: list[tuple[str, float]] = []

    def prepare(batch: dict[str, Tensor]) -> dict[str, Tensor]:
        events.append(("prepare", float(student.weight.detach())))
        return batch

    def loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        events.append(("loss", float(student.weight.detach())))
        return student(batch["x"].float()).mean(), {}

    features = [{"input_ids": [i], "x": [1.0]} for i in range(4)]
    fit(modules=[student], features=features,
        collator=lambda rows: {"x": torch.tensor([r["x"] for r in rows])}, compute_loss=loss,
        hp=Hyperparameters(warmup_ratio=0.0, gradient_accumulation_steps=2), epochs=1,
        batch_size=1, learning_rate=0.1, device=CPU, reporter=NullReporter(), stage="distill",
        prepare_batch=prepare)
    # Then each group's batches are all prepared before its first loss, from the weights the
    # previous optimizer step left
    assert [kind for kind, _ in events] == ["prepare", "prepare", "loss", "loss"] * 2
    first, second = events[0][1], events[4][1]
    assert events[1][1] == events[2][1] == first and events[5][1] == events[7][1] == second
    assert second != first
