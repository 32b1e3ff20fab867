"""Teacher fine-tuning on little data: the floor on optimizer steps, and the warning (event, report,
model cards) when the fine-tuned teacher ends near the majority-class rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillation.config import FinetuneSpec, Hyperparameters
from distillation.engine import run_job
from distillation.finetune import finetune_epochs
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.reporting import RecordingReporter


@pytest.mark.parametrize(("spec", "examples", "accumulation", "epochs"), [
    (FinetuneSpec(epochs=1, min_steps=200), 1500, 1, 5),  # 47 steps an epoch
    (FinetuneSpec(epochs=1, min_steps=200), 1500, 2, 9),  # 24 optimizer steps an epoch
    (FinetuneSpec(epochs=6, min_steps=200), 1500, 1, 6),  # already past the floor
    (FinetuneSpec(epochs=1, min_steps=0), 1500, 1, 1),  # no floor
    (FinetuneSpec(epochs=1, min_steps=200, batch_size=100), 1500, 1, 14),  # its own batch size
])
def test_epochs_are_extended_to_reach_the_step_floor(
    spec: FinetuneSpec, examples: int, accumulation: int, epochs: int
) -> None:
    hp = Hyperparameters(batch_size=32, gradient_accumulation_steps=accumulation)
    assert finetune_epochs(spec, hp, examples) == epochs


def test_a_teacher_that_does_not_learn_is_flagged(tiny_base_dir: Path, tmp_path: Path) -> None:
    # Given training labels three-quarters positive, a balanced validation file, and a teacher
    # fine-tuned at a learning rate too small to move it
    rows = sentiment_records(48)
    train = [r for r in rows if r["label"] == "positive"] + \
        [r for r in rows if r["label"] == "negative"][:8]
    config = toy_job(
        tiny_base_dir, tmp_path, train,
        hyperparameters=Hyperparameters(epochs=1, batch_size=8, learning_rate=5e-3),
        validation_file=write_jsonl(tmp_path / "dev.jsonl", sentiment_records(32, seed=1)),
        teacher_finetune=FinetuneSpec(epochs=1, learning_rate=1e-9, min_steps=8),
    )
    recorder = RecordingReporter()

    # When the job runs
    result = run_job(config, recorder)

    # Then fine-tuning ran two epochs of 4 steps, to reach the floor of 8
    finetune = [p for p in recorder.progress_events if p.stage == "finetune_teacher"]
    assert finetune[-1].total_steps == 8
    assert any("for 2 epoch(s) (extended from 1 to reach at least 8" in m
               for m in recorder.messages)
    # and a warning event, the report and both model cards say the teacher learned nothing
    assert len(recorder.warnings) == 1
    warning = recorder.warnings[0]
    assert ("less than 3 points above always answering the most common training label "
            "(75.0%)") in warning
    assert result.report["warnings"] == [warning]
    assert result.report["teacher"]["accuracy"] < 0.78
    assert f"**Warning:** {warning}" in (result.model_dir / "README.md").read_text()
    assert result.teacher is not None and result.teacher.report["warnings"] == [warning]
    assert f"**Warning:** {warning}" in (result.teacher.model_dir / "README.md").read_text()
