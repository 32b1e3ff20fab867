"""Teacher-output caching: same losses as running the teacher, one teacher pass per example,
reuse by a resumed job; and the top-k cache for LM vocabularies."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from distillation.config import Hyperparameters, JobConfig, LossSpec
from distillation.engine import cache_teacher, distill
from distillation.layout import teacher_cache_path
from distillation.losses.functions import KLLoss, LossInputs, build_losses
from distillation.models.info import inspect_model, model_info
from distillation.students.build import build_student
from distillation.tasks import TaskData, get_task
from distillation.tasks.classification import teacher_logit_cache
from distillation.tasks.classification_data import prepare_data
from distillation.training.teacher_cache import (
    EXAMPLE_INDEX,
    load_tensors,
    save_tensors,
    with_example_index,
)
from distillation.training.topk_cache import TopKCache, compress, sparse_target, topk_kl
from tests.factories.jobs import toy_job
from tests.factories.probes import TeacherCounter
from tests.factories.records import sentiment_records
from tests.factories.reporting import RecordingReporter

CPU = torch.device("cpu")


def _config(teacher_dir: Path, tmp: Path, *, cache: bool, epochs: int = 3,
            losses: list[LossSpec] | None = None) -> JobConfig:
    hp = Hyperparameters(epochs=epochs, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=1, eval_batch_size=5, cache_teacher=cache)
    return toy_job(teacher_dir, tmp, sentiment_records(24), hyperparameters=hp,
                   losses=losses or [LossSpec("kl", 0.5), LossSpec("ce", 0.5)], benchmark_runs=10)


def _parts(config: JobConfig) -> tuple[TaskData, PreTrainedModel, PreTrainedModel, Any]:
    data = prepare_data(config, inspect_model(config.teacher_path))
    teacher = AutoModelForSequenceClassification.from_pretrained(config.teacher_path).eval()
    teacher.requires_grad_(False)
    torch.manual_seed(0)
    student = build_student(config.student, teacher)
    losses = build_losses(config.losses, config.temperature, model_info(student.config),
                          model_info(teacher.config))
    return data, teacher, student, losses


def _logit_cache(teacher: nn.Module, features: list[Any], config: JobConfig,
                 data: TaskData) -> Any:
    """The classification teacher cache of `features`, in batches of 5."""
    return teacher_logit_cache(teacher, features, data.student.collator, work_dir=config.work_dir,
                               prefix="", batch_size=5, device=CPU, reporter=RecordingReporter())


def test_cached_logits_give_the_same_loss_on_a_batch(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    # Given a cache of the teacher's logits on the training set (computed in other batches)
    config = _config(tiny_teacher_dir, tmp_path, cache=True)
    data, teacher, student, losses = _parts(config)
    cache = _logit_cache(teacher, data.student.train, config, data)
    # When one training batch is scored with the teacher run live and with the cache
    rows = with_example_index(data.student.train)
    batch = data.student.collator([rows[i] for i in (3, 17, 0, 9, 22, 11)])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        live = teacher(**inputs).logits
        s_logits = student(**inputs).logits
    cached = cache.lookup(batch)
    # Then the logits and the loss agree within float tolerance
    torch.testing.assert_close(cached, live, rtol=1e-4, atol=1e-5)
    live_loss, _ = losses(LossInputs(s_logits, live, labels=batch["labels"]))
    cached_loss, _ = losses(LossInputs(s_logits, cached, labels=batch["labels"]))
    assert cached_loss.item() == pytest.approx(live_loss.item(), rel=1e-5)
    assert batch[EXAMPLE_INDEX].tolist() == [3, 17, 0, 9, 22, 11]


def test_cache_on_runs_the_teacher_once_per_example_and_trains_the_same(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    runs: dict[bool, tuple[list[tuple[int, float]], int, RecordingReporter]] = {}
    for cache in (True, False):
        # Given the same job with caching on and off (3 epochs over 24 examples)
        config = _config(tiny_teacher_dir, tmp_path / str(cache), cache=cache)
        data, teacher, student, losses = _parts(config)
        counter = TeacherCounter(teacher)
        recorder = RecordingReporter()
        # When the distillation stage runs
        result = distill(config, data, teacher, student, losses, CPU, recorder)
        runs[cache] = (result.history, counter.examples, recorder)

    on_history, on_examples, on_recorder = runs[True]
    off_history, off_examples, _ = runs[False]
    # Then the cached run made one teacher pass per example, the uncached one per epoch
    assert on_examples == 24
    assert off_examples == 3 * 24
    # and both trained the same (same batches, same teacher logits within float tolerance)
    assert len(on_history) == len(off_history) == 9
    for (step_on, loss_on), (step_off, loss_off) in zip(on_history, off_history, strict=True):
        assert step_on == step_off
        assert loss_on == pytest.approx(loss_off, rel=1e-4, abs=1e-6)
    stages = [event.stage for event in on_recorder.progress_events]
    assert "cache_teacher" in stages and stages.index("cache_teacher") < stages.index("distill")
    assert teacher_cache_path(tmp_path / "True" / "work").exists()
    assert not teacher_cache_path(tmp_path / "False" / "work").exists()


def test_a_resumed_job_reuses_the_cache_file(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_teacher_dir, tmp_path, cache=True)
    data, teacher, _, _ = _parts(config)
    first = _logit_cache(teacher, data.student.train, config, data)
    counter = TeacherCounter(teacher)
    # When the job starts again with the same data and teacher, it reads the file
    again = _logit_cache(teacher, data.student.train, config, data)
    assert again.reused and not first.reused and counter.examples == 0
    torch.testing.assert_close(again.logits, first.logits)
    # A changed teacher (another head) or changed data misses the cache.
    with torch.no_grad():
        teacher.classifier.weight.add_(0.1)
    changed = _logit_cache(teacher, data.student.train, config, data)
    fewer = _logit_cache(teacher, data.student.train[:10], config, data)
    assert not changed.reused and not fewer.reused
    assert counter.examples == 24 + 10


def test_attention_losses_skip_the_cache_and_say_why(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    config = _config(tiny_teacher_dir, tmp_path, cache=True, epochs=2,
                     losses=[LossSpec("kl", 1.0), LossSpec("attention_mse", 1.0)])
    data, teacher, _, losses = _parts(config)
    recorder = RecordingReporter()
    assert cache_teacher(config, get_task(config.task), data, teacher, losses, CPU,
                         recorder) is None
    assert any("Not caching" in m and "attention maps, which the teacher cache does not keep" in m
               for m in recorder.messages)
    assert not teacher_cache_path(config.work_dir).exists()


# -- top-k cache for LM vocabularies ------------------------------------------------------------


def _log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    norm = math.log(sum(math.exp(x / temperature) for x in row))
    return [x / temperature - norm for x in row]


def test_topk_keeps_the_top_probabilities_and_the_tail_mass() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0, 2.0]])
    rows = compress(logits, k=2)
    probs = torch.softmax(logits, dim=-1)[0]
    assert rows.indices.tolist() == [[0, 4]]
    torch.testing.assert_close(rows.log_probs.exp()[0], probs[[0, 4]])
    assert rows.tail_mass.item() == pytest.approx(float(probs[[1, 2, 3]].sum()), rel=1e-6)
    # At T = 1 the sparse target is exactly those probabilities and the tail as the rest bucket.
    top, rest = sparse_target(rows, 1.0, vocab_size=5)
    torch.testing.assert_close(top.exp()[0], probs[[0, 4]])
    assert rest.exp().item() == pytest.approx(rows.tail_mass.item(), rel=1e-5)


def test_topk_kl_hand_computed() -> None:
    # Teacher over 4 tokens, k = 2: p = softmax(t); buckets {0, 1, rest = 2 + 3}.
    t = [2.0, 1.0, 0.0, -1.0]
    s = [0.5, 1.5, -0.5, 0.0]
    p, q = [math.exp(x) for x in _log_softmax(t)], [math.exp(x) for x in _log_softmax(s)]
    p_hat, q_hat = [p[0], p[1], p[2] + p[3]], [q[0], q[1], q[2] + q[3]]
    expected = sum(a * math.log(a / b) for a, b in zip(p_hat, q_hat, strict=True))

    rows = compress(torch.tensor([t]), k=2)
    value = topk_kl(torch.tensor([s]), rows, temperature=1.0)

    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_topk_kl_with_k_equal_to_the_vocabulary_is_the_full_kl() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(6, 10), torch.randn(6, 10, requires_grad=True)
    rows = compress(teacher, k=10)
    for temperature in (1.0, 2.0):
        full = KLLoss(temperature)(LossInputs(student, teacher))
        sparse = topk_kl(student, rows, temperature)
        assert sparse.item() == pytest.approx(full.item(), rel=1e-5)
    topk_kl(student, rows, 2.0).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_topk_temperature_treats_the_tail_as_uniform() -> None:
    # Tail tokens of equal logits: the uniform-tail model is then exact at any temperature.
    logits = torch.tensor([[4.0, 2.0, 0.0, 0.0, 0.0]])
    rows = compress(logits, k=2)
    top, rest = sparse_target(rows, 2.0, vocab_size=5)
    soft = torch.softmax(logits / 2.0, dim=-1)[0]
    torch.testing.assert_close(top.exp()[0], soft[:2])
    assert rest.exp().item() == pytest.approx(float(soft[2:].sum()), rel=1e-5)


def test_topk_cache_looks_up_positions_by_example_and_round_trips(tmp_path: Path) -> None:
    # Given three examples with 2, 1 and 3 target positions over a vocabulary of 50
    torch.manual_seed(1)
    logits = [torch.randn(n, 50) for n in (2, 1, 3)]
    cache = TopKCache.from_examples([compress(x, k=4) for x in logits], vocab_size=50)
    assert cache.log_probs.dtype == torch.float16 and cache.indices.dtype == torch.int32
    # When a batch holds examples 2 and 0
    rows = cache.lookup(torch.tensor([2, 0]))
    # Then it gets example 2's positions, then example 0's, in position order
    expected = compress(torch.cat([logits[2], logits[0]]), k=4)
    assert rows.indices.tolist() == expected.indices.tolist()
    torch.testing.assert_close(rows.log_probs, expected.log_probs, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(rows.tail_mass, expected.tail_mass)
    # and the cache survives the cache file format
    header = {"version": 1, "kind": "topk", "fingerprint": "abc"}
    save_tensors(tmp_path / "cache.pt", header, cache.tensors())
    loaded = load_tensors(tmp_path / "cache.pt", header)
    assert loaded is not None and load_tensors(tmp_path / "cache.pt", {**header, "fingerprint": "x"}) is None
    again = TopKCache.from_tensors(loaded)
    assert (again.k, again.vocab_size) == (4, 50)
    assert torch.equal(again.lookup([1]).indices, cache.lookup([1]).indices)
