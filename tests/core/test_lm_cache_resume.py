"""Language-model jobs: the top-k teacher cache (one teacher pass per example, the same KL as the
live teacher when k covers the vocabulary, skipped for losses that need the full distribution)
and resuming a killed job from its checkpoint, on tiny GPT-2s and T5s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, set_seed

from distillation.config import FinetuneSpec, Hyperparameters, JobConfig, LossSpec
from distillation.engine import distill, run_job
from distillation.layout import list_checkpoints, teacher_cache_path
from distillation.losses.functions import CompositeLoss, build_losses
from distillation.models.info import inspect_model
from distillation.students.build import build_student
from distillation.tasks import CAUSAL_LM, SEQ2SEQ, TaskData, get_task
from tests.factories.jobs import toy_job
from tests.factories.lm import copy_records, lm_tokenizer, reverse_records, save_gpt2, save_t5
from tests.factories.probes import TeacherCounter
from tests.factories.records import write_jsonl
from tests.factories.reporting import RecordingReporter, WorkerDied

CPU = torch.device("cpu")
VOCAB = len(lm_tokenizer())  # 20 tokens


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {CAUSAL_LM: save_gpt2(tmp_path_factory.mktemp("gpt2")),
            SEQ2SEQ: save_t5(tmp_path_factory.mktemp("t5"))}


def _config(task: str, teacher: Path, tmp: Path, **overrides: Any) -> JobConfig:
    """24 records in batches of 8 for 2 epochs (causal-lm: copy; seq2seq: reverse)."""
    records = copy_records(24, seed=1) if task == CAUSAL_LM else reverse_records(24, seed=1)
    hp = overrides.pop("hyperparameters", None) or Hyperparameters(
        epochs=2, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0, log_every_steps=1,
        eval_batch_size=16,
    )
    return toy_job(teacher, tmp, records, task=task, hyperparameters=hp, **overrides)


def _parts(config: JobConfig) -> tuple[TaskData, PreTrainedModel, PreTrainedModel, CompositeLoss]:
    """What `run_job` builds before distilling: data, teacher, student, losses."""
    task = get_task(config.task)
    data = task.prepare(config, inspect_model(config.teacher_path))
    teacher = task.model_class.from_pretrained(config.teacher_path).eval()
    teacher.requires_grad_(False)
    set_seed(0)
    student = build_student(config.student, teacher, task=config.task)
    losses = build_losses(config.losses, config.temperature, task.loss_shape(student.config),
                          task.loss_shape(teacher.config))
    return data, teacher, student, losses


@pytest.mark.parametrize("task", [CAUSAL_LM, SEQ2SEQ])
def test_cache_runs_the_teacher_once_per_example_and_gives_the_full_kl_when_k_covers_the_vocab(
    task: str, teachers: dict[str, Path], tmp_path: Path,
) -> None:
    runs: dict[bool, tuple[int, RecordingReporter, int]] = {}
    for cache in (True, False):
        # Given the same job with the teacher cache on (k ≥ vocabulary) and off
        hp = Hyperparameters(epochs=2, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                             log_every_steps=1, eval_batch_size=5, cache_teacher=cache,
                             teacher_cache_top_k=64)
        config = _config(task, teachers[task], tmp_path / str(cache), hyperparameters=hp)
        data, teacher, student, losses = _parts(config)
        counter, recorder = TeacherCounter(teacher), RecordingReporter()
        # When the distillation stage runs
        result = distill(config, data, teacher, student, losses, CPU, recorder)
        runs[cache] = (counter.examples, recorder, len(data.student.train))
        assert result.steps == 2 * 3 and [e["epoch"] for e in result.evals] == [1, 2]

    on_examples, on, examples = runs[True]
    off_examples, off, _ = runs[False]
    # Then the cached run ran the teacher once per training example, the live one every epoch
    assert on_examples == examples and off_examples == 2 * examples
    stages = [event.stage for event in on.progress_events]
    assert "cache_teacher" in stages and stages.index("cache_teacher") < stages.index("distill")
    assert "cache_teacher" not in {event.stage for event in off.progress_events}
    # and, same student, same first batch, the top-k KL is the full KL (within float16 storage)
    first_on, first_off = on.train_metrics()[0], off.train_metrics()[0]
    assert first_on["loss_kl"] == pytest.approx(first_off["loss_kl"], rel=1e-3, abs=1e-5)
    assert first_on["loss_ce"] == pytest.approx(first_off["loss_ce"], rel=1e-6)
    # The cache file says what it holds: k capped at the vocabulary, one row per target token.
    saved = torch.load(teacher_cache_path(tmp_path / "True" / "work"), weights_only=True)
    assert saved["header"]["kind"] == "topk" and saved["header"]["k"] == 64
    assert saved["tensors"]["shape"].tolist() == [VOCAB, VOCAB]
    assert saved["tensors"]["offsets"].shape[0] == examples + 1
    assert not teacher_cache_path(tmp_path / "False" / "work").exists()


def test_losses_on_the_full_distribution_skip_the_cache_and_say_why(
    teachers: dict[str, Path], tmp_path: Path,
) -> None:
    config = _config(CAUSAL_LM, teachers[CAUSAL_LM], tmp_path,
                     losses=[LossSpec("kl", 0.5), LossSpec("reverse_kl", 0.5)])
    data, teacher, student, losses = _parts(config)
    counter, recorder = TeacherCounter(teacher), RecordingReporter()

    distill(config, data, teacher, student, losses, CPU, recorder)

    assert counter.examples == 2 * len(data.student.train)
    assert any("Not caching" in m and "reverse_kl needs the teacher's full distribution" in m
               for m in recorder.messages)
    assert not teacher_cache_path(config.work_dir).exists()


def _resume_config(task: str, teacher: Path, tmp: Path, name: str) -> JobConfig:
    """32 records in batches of 8 for 3 epochs: 12 optimizer steps, a checkpoint every 2; the
    teacher is fine-tuned first and its outputs cached."""
    hp = Hyperparameters(epochs=3, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=1, eval_batch_size=16, checkpoint_every_steps=2)
    records = copy_records(32, seed=1) if task == CAUSAL_LM else reverse_records(32, seed=1)
    return _config(task, teacher, tmp / name, hyperparameters=hp,
                   train_file=write_jsonl(tmp / "train.jsonl", records),
                   teacher_finetune=FinetuneSpec(epochs=1, learning_rate=5e-3))


@pytest.mark.parametrize("task", [CAUSAL_LM, SEQ2SEQ])
def test_a_killed_lm_job_resumes_and_ends_like_an_uninterrupted_one(
    task: str, teachers: dict[str, Path], tmp_path: Path,
) -> None:
    # Given a job whose worker dies at step 5, after the checkpoint of step 4
    config = _resume_config(task, teachers[task], tmp_path, "job")
    first = RecordingReporter(die_at_step=5)
    with pytest.raises(WorkerDied):
        run_job(config, first)
    assert first.stages()[:3] == ["finetune_teacher", "cache_teacher", "distill"]
    kept = list_checkpoints(config.work_dir)
    assert [meta["step"] for _, meta in kept] == [4, 2]
    assert kept[0][1]["teacher_cache"] == str(teacher_cache_path(config.work_dir))

    # When the job is run again with the same config
    second = RecordingReporter()
    result = run_job(config, second)

    # Then it kept the fine-tuned teacher and its cache, resumed at step 4, and trained 5..12
    texts = second.messages
    assert "finetune_teacher" not in second.stages() and "cache_teacher" not in second.stages()
    assert any("fine-tuned by an earlier attempt" in text for text in texts)
    assert any(text.startswith("Reusing the teacher's cached top-32 tokens") for text in texts)
    assert second.resumed_from() == [4]
    assert "Resumed from checkpoint at step 4 (epoch 1)." in texts
    assert first.steps == [1, 2, 3, 4] and second.steps == list(range(5, 13))
    assert list_checkpoints(config.work_dir)[0][1]["step"] == 12
    assert result.eval_metrics["epoch"] == 3 and result.eval_metrics["step"] == 12
    assert "(12 optimizer steps)" in (config.output_dir / "README.md").read_text()

    # and it ends where a run never interrupted ends: 12 steps, the same weights
    whole_config = _resume_config(task, teachers[task], tmp_path, "whole")
    whole = RecordingReporter()
    run_job(whole_config, whole)
    assert whole.steps == list(range(1, 13)) and whole.resumed_from() == []
    resumed = load_file(str(config.output_dir / "model.safetensors"))
    reference = load_file(str(whole_config.output_dir / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert (resumed[name] - tensor).abs().max() <= 1e-5, name
