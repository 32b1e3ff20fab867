"""Checkpoints and resume: a run killed after a checkpoint is started again with the same config,
continues from the checkpoint, and ends where an uninterrupted run ends; the training curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from distillation.config import FinetuneSpec, Hyperparameters, JobConfig, StudentSpec
from distillation.engine import run_job
from distillation.export.curve import CURVE_FILE
from distillation.layout import list_checkpoints
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.reporting import RecordingReporter, WorkerDied

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_config(teacher: Path, tmp: Path, name: str, **overrides: Any) -> JobConfig:
    """32 examples in batches of 8 for 3 epochs: 12 optimizer steps, a checkpoint every 2."""
    hp = overrides.pop("hyperparameters", None) or Hyperparameters(
        epochs=3, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0, log_every_steps=1,
        eval_batch_size=16, checkpoint_every_steps=2,
    )
    return toy_job(teacher, tmp / name, sentiment_records(32), hyperparameters=hp,
                   validation_file=write_jsonl(tmp / "validation.jsonl",
                                               sentiment_records(16, seed=1)),
                   **overrides)


def assert_same_weights(got: Path, want: Path) -> None:
    """Two exported students hold the same tensors, each within 1e-5."""
    resumed = load_file(str(got / "model.safetensors"))
    reference = load_file(str(want / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert (resumed[name] - tensor).abs().max() <= 1e-5, name


@pytest.fixture(scope="module")
def uninterrupted(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[JobConfig, RecordingReporter]:
    config = make_config(tiny_teacher_dir, tmp_path_factory.mktemp("ckpt"), "whole")
    recorder = RecordingReporter()
    run_job(config, recorder)
    return config, recorder


def test_killed_job_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
    tiny_teacher_dir: Path, tmp_path: Path, uninterrupted: tuple[JobConfig, RecordingReporter]
) -> None:
    # Given a run whose worker dies at step 5, after the checkpoint of step 4
    config = make_config(tiny_teacher_dir, tmp_path, "job")
    first = RecordingReporter(die_at_step=5)
    with pytest.raises(WorkerDied):
        run_job(config, first)
    kept = list_checkpoints(config.work_dir)
    assert [meta["step"] for _, meta in kept] == [4, 2]  # only the newest two stay
    meta = kept[0][1]
    assert meta["id"] == "ckpt-4" and meta["epoch"] == 1 and meta["size_bytes"] > 0
    assert (kept[0][0] / "student.safetensors").exists() and (kept[0][0] / "trainer.pt").exists()
    assert not list((config.work_dir / "checkpoints").glob(".tmp-*"))

    # When the job is run again with the same config
    second = RecordingReporter()
    result = run_job(config, second)

    # Then it resumed at step 4 and trained steps 5..12 only: 12 in all, as without the crash
    assert second.resumed_from() == [4]
    assert "Resumed from checkpoint at step 4 (epoch 1)." in second.messages
    assert first.steps == [1, 2, 3, 4] and second.steps == list(range(5, 13))
    whole_config, whole = uninterrupted
    assert whole.steps == list(range(1, 13)) and whole.resumed_from() == []
    assert "(12 optimizer steps)" in (config.output_dir / "README.md").read_text()
    final = list_checkpoints(config.work_dir)[0][1]
    assert final["step"] == 12

    # and, RNG, optimizer, schedule and data position restored, it ends with the same weights
    assert_same_weights(result.model_dir, whole_config.output_dir)


def test_training_curve_png_is_written_and_in_the_model_card(
    uninterrupted: tuple[JobConfig, RecordingReporter],
) -> None:
    config, _ = uninterrupted
    curve = config.output_dir / CURVE_FILE
    data = curve.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 400 and height >= 300
    card = (config.output_dir / "README.md").read_text()
    assert f"]({CURVE_FILE})" in card and "## Training curve" in card
    state = json.loads((list_checkpoints(config.work_dir)[0][0] / "state.json").read_text())
    assert [e["epoch"] for e in state["evals"]] == [1, 2]  # saved before epoch 3's evaluation
    assert [step for step, _ in state["history"]] == list(range(1, 13))


def test_a_resumed_job_reuses_its_finetuned_teacher(tiny_base_dir: Path, tmp_path: Path) -> None:
    # Given a job that fine-tunes its teacher, and dies after the first distillation checkpoint
    hp = Hyperparameters(epochs=1, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=1, checkpoint_every_steps=1)
    config = make_config(tiny_base_dir, tmp_path, "job", hyperparameters=hp,
                         teacher_finetune=FinetuneSpec(epochs=1, learning_rate=5e-3))
    first = RecordingReporter(die_at_step=2)
    with pytest.raises(WorkerDied):
        run_job(config, first)
    assert first.stages()[:2] == ["finetune_teacher", "distill"]
    assert (config.work_dir / "teacher" / "finetuned.json").exists()

    # When it runs again, it neither fine-tunes again nor restarts distillation
    second = RecordingReporter()
    run_job(config, second)
    assert "finetune_teacher" not in second.stages()
    assert any("fine-tuned by an earlier attempt" in text for text in second.messages)
    assert second.resumed_from() == [1] and second.steps == [2, 3, 4]


def test_a_checkpoint_of_another_student_shape_is_passed_over_and_training_starts_afresh(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given a job that died after its checkpoint of step 4, with a 1 × 32 student
    first = RecordingReporter(die_at_step=5)
    with pytest.raises(WorkerDied):
        run_job(make_config(tiny_teacher_dir, tmp_path, "job"), first)

    # When it runs again and its student comes out another width (sized again on resume)
    narrower = StudentSpec(architecture={"num_layers": 1, "hidden_size": 16}, init="teacher")
    config = make_config(tiny_teacher_dir, tmp_path, "job", student=narrower)
    second = RecordingReporter()
    run_job(config, second)

    # Then it says why each checkpoint does not fit, trains all 12 steps afresh, and finishes
    passed_over = [text for text in second.messages if "does not fit" in text]
    assert [text.split()[1] for text in passed_over] == ["step-4", "step-2"]
    assert "its weights have other shapes" in passed_over[0] and "(32,) vs (16,)" in passed_over[0]
    assert second.resumed_from() == [] and second.steps == list(range(1, 13))
    weights = load_file(str(config.output_dir / "model.safetensors"))
    assert weights["bert.embeddings.LayerNorm.weight"].shape == (16,)


def test_a_job_resumed_mid_epoch_with_gradient_accumulation_matches_an_uninterrupted_run(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Given 32 examples in batches of 4, two batches per optimizer step (4 steps an epoch, 8 in
    # all) and a checkpoint every 3 steps: step 3 is mid-epoch, 6 of the epoch's 8 batches in
    hp = Hyperparameters(epochs=2, batch_size=4, gradient_accumulation_steps=2,
                         learning_rate=5e-3, warmup_ratio=0.0, log_every_steps=1,
                         eval_batch_size=16, checkpoint_every_steps=3, select="last")
    config = make_config(tiny_teacher_dir, tmp_path, "job", hyperparameters=hp)
    first = RecordingReporter(die_at_step=5)
    with pytest.raises(WorkerDied):
        run_job(config, first)
    assert list_checkpoints(config.work_dir)[0][1]["step"] == 3

    # When it runs again, and the same job runs uninterrupted
    second = RecordingReporter()
    run_job(config, second)
    whole = make_config(tiny_teacher_dir, tmp_path, "whole", hyperparameters=hp)
    run_job(whole, RecordingReporter())

    # Then it went on from step 3 (epoch 1) and ends with the same weights
    assert second.resumed_from() == [3] and second.steps == list(range(4, 9))
    assert "Resumed from checkpoint at step 3 (epoch 1)." in second.messages
    assert_same_weights(config.output_dir, whole.output_dir)
