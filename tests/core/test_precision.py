"""Training precision on a CPU (`JobConfig.cpu_bf16`): bf16 autocast inside a `cpu_bf16` block,
fp32 outside it, the automatic choice read from the CPU, and a job that trains in bf16 while
its weights, its evaluation and its exported model stay fp32."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from distillation.config import FinetuneSpec, Hyperparameters
from distillation.engine import run_job
from distillation.training.loop import autocast, cpu_bf16, cpu_bf16_on, native_cpu_bf16
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records
from tests.factories.reporting import RecordingReporter

CPU = torch.device("cpu")


def product_dtype() -> torch.dtype:
    with autocast(CPU):
        return nn.Linear(4, 4)(torch.ones(1, 4)).dtype


def test_a_cpu_computes_in_bf16_only_inside_a_bf16_block() -> None:
    assert product_dtype() == torch.float32  # outside any block: fp32, as a served model answers
    with cpu_bf16(True) as on:
        assert on and cpu_bf16_on() and product_dtype() == torch.bfloat16
        with cpu_bf16(False):
            assert product_dtype() == torch.float32
        assert product_dtype() == torch.bfloat16  # the outer block's again
    assert not cpu_bf16_on() and product_dtype() == torch.float32


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (True, False), (False, True)])
def test_auto_turns_bf16_on_only_where_the_cpu_computes_it_in_hardware(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool,
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    expected = amx or avx512_bf16
    assert native_cpu_bf16() is expected
    with cpu_bf16(None) as on:
        assert on is expected
        assert product_dtype() == (torch.bfloat16 if expected else torch.float32)
    with cpu_bf16(True) as forced:  # asked for, it is on whatever the CPU
        assert forced


@pytest.fixture
def forwards() -> Iterator[list[bool]]:
    """Whether CPU autocast was on at every nn.Linear forward while the test runs."""
    seen: list[bool] = []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, nn.Linear):
            seen.append(torch.is_autocast_enabled("cpu"))

    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


def job(tmp: Path, teacher: Path, precision: bool, **overrides: Any) -> Any:
    hp = Hyperparameters(epochs=1, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         eval_batch_size=16)
    return toy_job(teacher, tmp, sentiment_records(24), hyperparameters=hp, cpu_bf16=precision,
                   **overrides)


def test_a_bf16_job_trains_in_bf16_and_keeps_fp32_weights_and_evaluation(
    tiny_base_dir: Path, tmp_path: Path, forwards: list[bool],
) -> None:
    # Given a job that fine-tunes its teacher, then distils, on a CPU told to train in bf16
    config = job(tmp_path, tiny_base_dir, True,
                 teacher_finetune=FinetuneSpec(epochs=1, learning_rate=5e-3))

    # When it runs
    recorder = RecordingReporter()
    result = run_job(config, recorder)

    # Then the fine-tuning and the training ran their products in bf16, and the final
    # evaluation, the speed measurement and the export in fp32 (the model as it will answer)
    assert result.report["training_precision"] == "bf16"
    assert any("on cpu in bf16: learning the teacher's class probabilities" in m
               for m in recorder.messages)
    assert True in forwards and forwards[-1] is False
    last_training = len(forwards) - 1 - forwards[::-1].index(True)
    assert not any(forwards[last_training + 1:])
    # and the weights it exports are fp32
    weights = load_file(config.output_dir / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}
    assert result.train_loss is not None and math.isfinite(result.train_loss)


def test_an_fp32_job_never_turns_bf16_on(
    tiny_teacher_dir: Path, tmp_path: Path, forwards: list[bool],
) -> None:
    recorder = RecordingReporter()
    result = run_job(job(tmp_path, tiny_teacher_dir, False), recorder)
    assert result.report["training_precision"] == "fp32"
    assert any(") on cpu: learning the teacher's class" in m for m in recorder.messages)
    assert forwards and not any(forwards)
