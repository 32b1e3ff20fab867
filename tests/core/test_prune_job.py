"""A job with `student.prune_vocabulary` end to end: the exported student reads a vocabulary of
the job's tokens only and the report and card say so; the teacher and its cache still read the
teacher's ids; a killed job resumes into the same pruned shape and ends as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillation.config import Hyperparameters, JobConfig, StudentSpec
from distillation.engine import run_job
from distillation.layout import teacher_cache_path
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.reporting import RecordingReporter, WorkerDied

TRAIN, VALIDATION = sentiment_records(32), sentiment_records(16, seed=1)


def make_config(teacher: Path, tmp: Path, name: str) -> JobConfig:
    """32 examples in batches of 8 for 3 epochs (12 steps, a checkpoint every 2), pruned; in
    fp32, so the cached logits can be matched to the teacher's own within 1e-5."""
    hp = Hyperparameters(epochs=3, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=1, eval_batch_size=16, checkpoint_every_steps=2)
    return toy_job(teacher, tmp / name, TRAIN, hyperparameters=hp,
                   validation_file=write_jsonl(tmp / "validation.jsonl", VALIDATION),
                   student=StudentSpec(architecture={"num_layers": 1, "hidden_size": 32},
                                       prune_vocabulary=True), cpu_bf16=False)


@pytest.fixture(scope="module")
def uninterrupted(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[JobConfig, RecordingReporter, Any]:
    config = make_config(tiny_teacher_dir, tmp_path_factory.mktemp("prune"), "whole")
    recorder = RecordingReporter()
    return config, recorder, run_job(config, recorder)


def job_ids(teacher_dir: Path) -> tuple[Any, list[int]]:
    """The teacher's tokenizer and the ids a pruned student keeps: those of the job's texts
    and the special tokens, in their old order."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    texts = [r["text"] for r in TRAIN + VALIDATION]
    used = {i for ids in tokenizer(texts)["input_ids"] for i in ids}
    return tokenizer, sorted(used | set(tokenizer.all_special_ids))


def test_exported_student_has_the_jobs_vocabulary_and_the_report_says_so(
    tiny_teacher_dir: Path, uninterrupted: tuple[JobConfig, RecordingReporter, Any],
) -> None:
    config, recorder, result = uninterrupted
    teacher_tokenizer, kept = job_ids(tiny_teacher_dir)
    out = config.output_dir

    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)

    assert model.config.vocab_size == len(tokenizer) == len(kept) < 30522
    assert result.report["vocabulary"] == {"pruned_from": 30522, "pruned_to": len(kept)}
    assert json.loads((out / "report.json").read_text())["vocabulary"] == \
        result.report["vocabulary"]
    assert f"Vocabulary: pruned from 30,522 to {len(kept):,} ids" in (out / "README.md").read_text()
    assert any(text.startswith(f"Pruned the student's vocabulary from 30,522 to {len(kept):,}")
               for text in recorder.messages)
    assert result.parameters == sum(p.numel() for p in model.parameters())
    # The exported tokenizer gives the ids the student was trained and evaluated on.
    texts = [r["text"] for r in VALIDATION]
    renumbered = [[kept.index(i) for i in ids] for ids in teacher_tokenizer(texts)["input_ids"]]
    assert tokenizer(texts)["input_ids"] == renumbered
    with torch.no_grad():
        predicted = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1)
    accuracy = sum(model.config.id2label[int(p)] == r["label"]
                   for p, r in zip(predicted, VALIDATION, strict=True)) / len(VALIDATION)
    assert accuracy == pytest.approx(result.report["student"]["accuracy"], abs=1e-4)


def test_the_teacher_and_its_cache_read_the_teachers_own_ids(
    tiny_teacher_dir: Path, uninterrupted: tuple[JobConfig, RecordingReporter, Any],
) -> None:
    config, recorder, _ = uninterrupted
    assert recorder.stages() == ["cache_teacher", "distill", "evaluate", "export"]
    cached = torch.load(teacher_cache_path(config.work_dir), weights_only=True)["tensors"]["logits"]

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    with torch.no_grad():
        logits = teacher(**tokenizer([r["text"] for r in TRAIN], padding=True,
                                     return_tensors="pt")).logits
    torch.testing.assert_close(cached, logits, rtol=0, atol=1e-5)


def test_a_killed_pruned_job_resumes_and_ends_as_an_uninterrupted_one(
    tiny_teacher_dir: Path, tmp_path: Path,
    uninterrupted: tuple[JobConfig, RecordingReporter, Any],
) -> None:
    # Given a pruned job whose worker dies at step 5, after the checkpoint of step 4
    config = make_config(tiny_teacher_dir, tmp_path, "job")
    with pytest.raises(WorkerDied):
        run_job(config, RecordingReporter(die_at_step=5))

    # When it runs again, it prunes to the same shape, loads the checkpoint and reuses the cache
    second = RecordingReporter()
    result = run_job(config, second)

    assert second.resumed_from() == [4] and second.steps == list(range(5, 13))
    assert "Reusing the teacher's cached outputs on 32 examples." in second.messages
    # and ends with the weights of the run that was never killed
    whole_config, _, _ = uninterrupted
    resumed = load_file(str(result.model_dir / "model.safetensors"))
    reference = load_file(str(whole_config.output_dir / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert (resumed[name] - tensor).abs().max() <= 1e-5, name
