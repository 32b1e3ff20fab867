"""Quantisation-aware distillation: the fake-quantised Linears compute what ONNX Runtime's int8
export computes, change the outputs only while on, never touch the weights, let gradients
through, switch on for the last share of the steps, and a job trained with QAD says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig
from transformers import BertForSequenceClassification as Bert

from distillation.config import Hyperparameters
from distillation.engine import run_job
from distillation.export.onnx_export import export_onnx
from distillation.export.onnx_runtime import OnnxClassifier, open_session
from distillation.training.quantization import (
    FakeQuant,
    ProgressHooks,
    QuantizationAware,
    fake_quant_activation,
    fake_quant_weight,
    quantized_modules,
)
from distillation.training.schedules import step_progress
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.reporting import RecordingReporter

TEXTS = ["a good film", "a really dull and boring plot", "fine", "moving and funny, a great story"]


def tiny_bert() -> Bert:
    torch.manual_seed(0)
    return Bert(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, num_labels=2)).eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 100, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_weights_round_to_symmetric_int8_per_output_channel() -> None:
    weight = torch.tensor([[0.5, -0.25, 0.1], [0.01, 0.02, -0.03]])

    rounded = fake_quant_weight(weight)

    for row, out in zip(weight, rounded, strict=True):
        step = row.abs().max() / 64
        assert torch.allclose(out, torch.round(row / step) * step)
    # per tensor: the small row is rounded to the large row's steps
    coarse = fake_quant_weight(weight, per_channel=False)
    assert torch.allclose(coarse[1], torch.round(weight[1] / (0.5 / 64)) * (0.5 / 64))
    assert (coarse[1] - weight[1]).abs().max() > (rounded[1] - weight[1]).abs().max()


def test_activations_round_to_uint8_over_the_range_with_zero() -> None:
    x = torch.tensor([0.2, 0.7, 1.0])  # all positive: the range is [0, 1]

    rounded = fake_quant_activation(x)

    assert torch.allclose(rounded, torch.round(x * 255) / 255)
    assert fake_quant_activation(torch.zeros(3)).eq(0).all()


def test_on_changes_the_outputs_off_restores_them_exactly_and_the_weights_stay() -> None:
    # Given a tiny BERT and its outputs and weights in fp32
    model, inputs = tiny_bert(), batch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        fp32 = model(**inputs).logits
    switch = FakeQuant(model)

    # When fake quantisation is switched on, then off
    switch.enable()
    with torch.no_grad():
        quantised = model(**inputs).logits
    on_state = model.state_dict()
    switch.disable()
    with torch.no_grad():
        again = model(**inputs).logits

    # Then the outputs moved while on (a little), came back exactly, and the weights never moved
    assert not torch.equal(quantised, fp32)
    assert torch.allclose(quantised, fp32, atol=0.05)
    assert torch.equal(again, fp32)
    assert list(on_state) == list(state)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]) and torch.equal(on_state[name], state[name]), name
    # q, k, v, out, up, down per layer; pooler, head; words, positions, segments
    assert len(switch.modules) == 2 * 6 + 2 + 3


def test_gradients_flow_through_the_rounding() -> None:
    model = tiny_bert().train()
    FakeQuant(model).enable()

    loss = model(**batch(), labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()

    for module in quantized_modules(model):  # Linears, and the Embeddings they read
        grad = module.weight.grad
        assert grad is not None and grad.abs().sum() > 0, module


@pytest.mark.parametrize(("share", "total", "on"), [
    (0.25, 8, [6, 7]), (0.5, 10, [5, 6, 7, 8, 9]), (0.0, 8, []), (1.0, 4, [0, 1, 2, 3])])
def test_the_switch_is_on_for_the_last_share_of_the_steps(share: float, total: int,
                                                          on: list[int]) -> None:
    # Given the hook the distill stage composes with the losses' schedule
    model = tiny_bert()
    qad = QuantizationAware(model, share)
    seen: list[float] = []
    hook = ProgressHooks([seen.append, qad])
    states = []

    # When the loop calls it before every step
    for step in range(total):
        hook(step_progress(step, total))
        states.append(qad.switch.on)
    qad.pause()

    # Then it is on for exactly the last steps, counted as the report counts them
    assert [s for s, state in enumerate(states) if state] == on
    assert qad.steps(total) == len(on)
    assert len(seen) == total  # the other hook still runs
    assert not qad.switch.on and all("forward" not in vars(m) for m in quantized_modules(model))


def test_fake_quantised_torch_computes_what_onnx_int8_computes(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given a classifier exported to ONNX int8 with per-channel weights
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_teacher_dir, model_dir)
    with torch.no_grad():  # weights of a trained model's scale, not the init's tiny ones
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        for module in quantized_modules(model):
            module.weight.normal_(0, 0.2)
        model.save_pretrained(model_dir)
    export_onnx(model_dir, per_channel=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    int8 = OnnxClassifier(open_session(model_dir / "onnx-int8", threads=1))(**inputs).logits

    # When the torch model runs with its Linears fake-quantised
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        fp32 = model(**inputs).logits
        FakeQuant(model).enable()
        simulated = model(**inputs).logits

    # Then it computes ONNX Runtime's int8 logits (to float error), which fp32 does not
    assert (fp32 - int8).abs().max() > 0.01
    assert torch.allclose(simulated, int8, atol=1e-4)


def test_a_job_trained_quantisation_aware_says_so_and_exports_fp32_weights(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given a classification job with QAD for the last half of its steps
    validation = write_jsonl(tmp_path / "validation.jsonl", sentiment_records(24, seed=1))
    hp = Hyperparameters(epochs=2, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         eval_batch_size=16, quantization_aware=0.5)
    config = toy_job(tiny_teacher_dir, tmp_path, sentiment_records(32), hyperparameters=hp,
                     validation_file=validation, export_runtimes=True, benchmark_runs=3)
    recorder = RecordingReporter()

    # When it runs
    result = run_job(config, recorder)

    # Then the report and the runtimes' reason say how many steps trained through int8
    qad = result.report["quantization_aware"]
    assert qad == {"share": 0.5, "steps": 4, "optimizer_steps": 8,
                   "in_exported_weights": True}
    runtimes = result.report["runtimes"]
    assert "quantisation-aware for the last 4 of 8 optimizer steps (50%)" in runtimes["reason"]
    assert any("the last 4 of 8 optimizer steps" in m for m in recorder.messages)
    # and the student was evaluated and exported with plain weights: fp32 ONNX scores as torch
    entries = runtimes["runtimes"]
    assert entries["onnx"]["accuracy"] == entries["torch"]["accuracy"]
