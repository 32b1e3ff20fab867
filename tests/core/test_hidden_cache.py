"""The teacher's hidden states in the teacher cache: the same losses as the live teacher within
fp16, no teacher forward while training, reuse by a resumed job (and not for other layers), the
budget's warning and its fallback, and a file that is read through a memory map."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from distillation.config import Hyperparameters, JobConfig, LossSpec
from distillation.engine import cache_teacher, distill
from distillation.layout import teacher_cache_path, teacher_hidden_path
from distillation.losses.functions import CompositeLoss, LossInputs, build_losses
from distillation.models.info import inspect_model, model_info
from distillation.students.build import build_student
from distillation.students.prune import prune_job_vocabulary
from distillation.tasks import TaskData, get_task
from distillation.tasks.classification import LogitFormat
from distillation.tasks.classification_data import prepare_data
from distillation.training.hidden_cache import (
    HiddenStateNotCached,
    HiddenStateSpec,
    readable_size,
)
from distillation.training.teacher_cache import TeacherCache, teacher_cache, with_example_index
from tests.factories.jobs import toy_job
from tests.factories.probes import TeacherCounter
from tests.factories.records import sentiment_records
from tests.factories.reporting import RecordingReporter

CPU = torch.device("cpu")
# The tiny teacher has 2 layers: hidden_mse reads layer 0 (hidden state 1), cosine the last (2).
LOSSES = [LossSpec("kl", 0.5), LossSpec("hidden_mse", 1.0, layer_map={0: 0}),
          LossSpec("cosine", 0.5)]


def _records() -> list[dict[str, Any]]:
    """24 toy sentences of 6 to 10 words, so batches pad."""
    rows = sentiment_records(24)
    for i, row in enumerate(rows):
        row["text"] += " fine" * (i % 5)
    return rows


def _config(teacher_dir: Path, tmp: Path, *, cache: bool = True, epochs: int = 3,
            losses: list[LossSpec] | None = None, **overrides: Any) -> JobConfig:
    hp = Hyperparameters(epochs=epochs, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=1, eval_batch_size=5, cache_teacher=cache)
    return toy_job(teacher_dir, tmp, _records(), hyperparameters=hp, losses=losses or LOSSES,
                   **overrides)


def _parts(config: JobConfig) -> tuple[TaskData, PreTrainedModel, PreTrainedModel, CompositeLoss]:
    data = prepare_data(config, inspect_model(config.teacher_path))
    teacher = AutoModelForSequenceClassification.from_pretrained(config.teacher_path).eval()
    teacher.requires_grad_(False)
    torch.manual_seed(0)
    student = build_student(config.student, teacher)
    losses = build_losses(config.losses, config.temperature, model_info(student.config),
                          model_info(teacher.config))
    return data, teacher, student, losses


def _cache(teacher: PreTrainedModel, data: TaskData, config: JobConfig,
           indices: tuple[int, ...] = (1, 2), reporter: Any = None) -> TeacherCache:
    """The classification teacher cache with the hidden states at `indices`, in batches of 5."""
    spec = HiddenStateSpec(indices, count=3, width=32, budget=config.teacher_cache_max_bytes)
    return teacher_cache(teacher, data.student.train, data.student.collator, LogitFormat(),
                         work_dir=config.work_dir, batch_size=5, device=CPU,
                         reporter=reporter or RecordingReporter(), hidden_states=spec)


def _batch(data: TaskData, rows: list[int]) -> dict[str, torch.Tensor]:
    features = with_example_index(data.student.train)
    return data.student.collator([features[i] for i in rows])


def test_the_losses_read_the_layers_they_compare(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    _, _, _, losses = _parts(_config(tiny_teacher_dir, tmp_path))
    assert losses.teacher_hidden_states(2) == (1, 2)
    _, _, _, kl_only = _parts(_config(tiny_teacher_dir, tmp_path, losses=[LossSpec("kl", 1.0)]))
    assert kl_only.teacher_hidden_states(2) == ()


def test_cached_hidden_states_give_the_online_loss_within_fp16(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given a cache of the teacher's logits and hidden states 1 and 2 (made in other batches)
    config = _config(tiny_teacher_dir, tmp_path)
    data, teacher, student, losses = _parts(config)
    cache = _cache(teacher, data, config)
    assert cache.hidden is not None and cache.hidden.indices == (1, 2)
    # When a training batch of examples of different lengths is scored both ways
    batch = _batch(data, [3, 17, 0, 9, 22, 11])
    mask = batch["attention_mask"]
    assert mask.sum(dim=1).unique().numel() > 1 and bool((mask[:, 0] == 1).all())  # right-padded
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        live = teacher(**inputs, output_hidden_states=True)
        s_out = student(**inputs, output_hidden_states=True)
    cached = cache.hidden.lookup(batch["example_index"], mask, mask.shape[1], CPU)

    # Then the real tokens' states agree within fp16, the padding is zeros
    real = mask.bool()
    for index in (1, 2):
        assert cached[index].shape == live.hidden_states[index].shape
        torch.testing.assert_close(cached[index][real], live.hidden_states[index][real],
                                   rtol=2e-3, atol=2e-3)
        assert not cached[index][~real].any()
    assert cached[-1] is cached[2] and len(cached) == 3
    with pytest.raises(HiddenStateNotCached, match=r"keeps the teacher's hidden states \[1, 2\]"):
        cached[0]
    # and so do the losses (hidden_mse and cosine both read the cache)
    def loss(teacher_hidden: Any) -> float:
        total, _ = losses(LossInputs(s_out.logits, live.logits, labels=batch["labels"],
                                     attention_mask=mask, student_hidden=s_out.hidden_states,
                                     teacher_hidden=teacher_hidden))
        return float(total)

    assert loss(cached) == pytest.approx(loss(live.hidden_states), rel=1e-3)


Runs = dict[bool, tuple[list[tuple[int, float]], int, RecordingReporter]]


def _runs_with_cache_on_and_off(teacher_dir: Path, tmp: Path, *, prune: bool = False) -> Runs:
    """The same hidden-state job (2 epochs over 24 examples) with the teacher cache on and off,
    its student's vocabulary pruned with `prune`: each run's loss history, the examples the
    teacher saw and its events."""
    runs: Runs = {}
    for cache in (True, False):
        config = _config(teacher_dir, tmp / str(cache), cache=cache, epochs=2)
        data, teacher, student, losses = _parts(config)
        if prune:  # the student's ids renumbered, the teacher fed its own ids as `teacher_*`
            data = prune_job_vocabulary(config, get_task(config.task), data, student,
                                        RecordingReporter()).data
            assert data.teacher_prefix and data.same_token_positions
        counter = TeacherCounter(teacher)
        recorder = RecordingReporter()
        result = distill(config, data, teacher, student, losses, CPU, recorder)
        runs[cache] = (result.history, counter.examples, recorder)
    return runs


def test_a_hidden_state_job_trains_without_the_teacher_and_a_resumed_one_reuses_the_file(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given the same hidden-state job with caching on and off, when the distillation stage runs
    runs = _runs_with_cache_on_and_off(tiny_teacher_dir, tmp_path)
    on_history, on_examples, on_recorder = runs[True]
    off_history, off_examples, _ = runs[False]
    # Then the cached run ran the teacher once per example (the cache pass), never in training
    assert on_examples == 24 and off_examples == 2 * 24
    # and trained as the online one did, within fp16 rounding of the teacher's states
    assert [step for step, _ in on_history] == [step for step, _ in off_history]
    for (_, loss_on), (_, loss_off) in zip(on_history, off_history, strict=True):
        assert loss_on == pytest.approx(loss_off, rel=2e-3)
    caching = [m for m in on_recorder.messages if m.startswith("Caching the teacher's hidden")]
    assert caching and "layers 0, 1" in caching[0] and "budget 8.6 GB" in caching[0]
    work = tmp_path / "True" / "work"
    assert teacher_hidden_path(work).exists()

    # When the job's cache_teacher stage runs again in the same work folder (a resumed attempt)
    config = _config(tiny_teacher_dir, tmp_path / "True")
    data, teacher, _, losses = _parts(config)
    counter = TeacherCounter(teacher)
    recorder = RecordingReporter()
    again = cache_teacher(config, get_task(config.task), data, teacher, losses, CPU, recorder)
    # Then it reads both files and never runs the teacher
    assert again is not None and again.reused and again.hidden is not None
    assert counter.examples == 0
    assert any(m.startswith("Reusing the teacher's cached hidden states at layers 0, 1")
               for m in recorder.messages)

    # and a job reading another layer computes them again, for its layers only
    other = _config(tiny_teacher_dir, tmp_path / "True",
                    losses=[LossSpec("kl", 0.5), LossSpec("hidden_mse", 1.0, layer_map={0: 1})])
    data, teacher, _, losses = _parts(other)
    counter = TeacherCounter(teacher)
    recorder = RecordingReporter()
    changed = cache_teacher(other, get_task(other.task), data, teacher, losses, CPU, recorder)
    assert changed is not None and not changed.reused and counter.examples == 24
    assert changed.hidden is not None and changed.hidden.indices == (2,)
    assert load_file(teacher_hidden_path(work))["hidden"].shape[1] == 1


def test_a_pruned_vocabulary_keeps_the_token_positions_so_its_hidden_states_are_cached(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given a hidden-state job whose student's vocabulary is pruned, with caching on and off,
    # when the distillation stage runs
    runs = _runs_with_cache_on_and_off(tiny_teacher_dir, tmp_path, prune=True)
    on_history, on_examples, on_recorder = runs[True]
    off_history, off_examples, _ = runs[False]
    # Then the hidden states were cached (the teacher ran once per example) and the training
    # is the online one's within fp16
    assert on_examples == 24 and off_examples == 2 * 24
    assert any(m.startswith("Caching the teacher's hidden") for m in on_recorder.messages)
    for (_, loss_on), (_, loss_off) in zip(on_history, off_history, strict=True):
        assert loss_on == pytest.approx(loss_off, rel=2e-3)


def test_over_the_budget_the_teacher_runs_for_the_hidden_states_and_the_job_finishes(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given a budget smaller than the hidden states (2 layers × 32 wide × 2 bytes a token)
    config = _config(tiny_teacher_dir, tmp_path, epochs=2, teacher_cache_max_bytes=1000)
    data, teacher, student, losses = _parts(config)
    tokens = sum(len(row["input_ids"]) for row in data.student.train)
    counter = TeacherCounter(teacher)
    recorder = RecordingReporter()
    # When the distillation stage runs
    result = distill(config, data, teacher, student, losses, CPU, recorder)
    # Then a warning names the size and the budget
    size = tokens * 2 * 32 * 2
    [warning] = recorder.warnings
    assert f"{tokens:,} tokens would take {readable_size(size)}" in warning
    assert "budget of 1.0 kB" in warning and "teacher runs every step" in warning
    assert "DISTILL_TEACHER_CACHE_MAX_BYTES" in warning
    assert ({"teacher_cache": {"hidden_state_bytes": size, "budget_bytes": 1000}}
            in [event for _, event in recorder.events])
    # and nothing is cached (no extra teacher pass): the teacher runs every step, once a batch
    assert not teacher_cache_path(config.work_dir).exists()
    assert not teacher_hidden_path(config.work_dir).exists()
    assert counter.examples == 2 * 24
    assert len(result.history) == 6 and all(np.isfinite(loss) for _, loss in result.history)


def test_the_hidden_states_are_read_through_a_memory_map(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given a cache with hidden states
    config = _config(tiny_teacher_dir, tmp_path)
    data, teacher, _, _ = _parts(config)
    hidden = _cache(teacher, data, config).hidden
    assert hidden is not None
    path = teacher_hidden_path(config.work_dir)
    # Then its rows are a read-only map of the file, which is a plain safetensors file
    assert isinstance(hidden.rows, np.memmap) and hidden.rows.mode == "r"
    assert Path(str(hidden.rows.filename)) == path.resolve()
    stored = load_file(path)
    assert stored["hidden"].dtype == np.float16
    assert np.array_equal(stored["hidden"], np.asarray(hidden.rows))
    assert stored["offsets"].tolist() == hidden.offsets.tolist()

    # When the file changes on disk after it was opened (example 3's rows set to 7)
    start, end = int(hidden.offsets[3]), int(hidden.offsets[4])
    writer = np.memmap(path, dtype=np.float16, mode="r+", offset=hidden.rows_at,
                       shape=hidden.shape)
    writer[start:end] = 7.0
    writer.flush()
    del writer
    # Then a lookup sees the change: it reads the file, not a copy loaded when it was opened
    batch = _batch(data, [3, 5])
    states = hidden.lookup(batch["example_index"], batch["attention_mask"],
                           batch["input_ids"].shape[1], CPU)
    assert bool((states[1][0, : end - start] == 7.0).all())
    assert not bool((states[1][1] == 7.0).any())
    # and another process (a DDP rank) gets the file's name, not its contents
    moved = pickle.loads(pickle.dumps(hidden))
    assert len(pickle.dumps(hidden)) < path.stat().st_size / 4
    again = moved.lookup(batch["example_index"], batch["attention_mask"],
                         batch["input_ids"].shape[1], CPU)
    assert torch.equal(again[2], states[2])
