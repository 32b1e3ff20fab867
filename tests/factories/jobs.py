"""Toy `JobConfig`s for the core's tests: a tiny teacher, a one-layer student initialised from
it, toy records, the default 0.5 KL + 0.5 CE, and everything written under one directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillation.config import Hyperparameters, JobConfig, LossSpec, StudentSpec
from tests.factories.records import write_jsonl

CLASSIFICATION = "sequence-classification"


def toy_job(teacher: Path, tmp: Path, records: list[dict[str, Any]], *,
            hyperparameters: Hyperparameters, task: str = CLASSIFICATION,
            **overrides: Any) -> JobConfig:
    """A job distilling `teacher` on `records` (written to `tmp/train.jsonl`), output and work
    directories under `tmp`; `overrides` set any other field. The student is one layer deep
    (and 32 wide, for a classifier), and kept in torch only unless `export_runtimes=True` (the
    ONNX export costs seconds a job; tests/core/test_engine.py turns it on)."""
    tmp.mkdir(parents=True, exist_ok=True)
    arch = {"num_layers": 1, "hidden_size": 32} if task == CLASSIFICATION else {"num_layers": 1}
    values: dict[str, Any] = {
        "task": task,
        "teacher_path": teacher,
        "student": StudentSpec(architecture=arch, init="teacher"),
        "train_file": write_jsonl(tmp / "train.jsonl", records),
        "output_dir": tmp / "output",
        "work_dir": tmp / "work",
        "losses": [LossSpec("kl", 0.5), LossSpec("ce", 0.5)],
        "hyperparameters": hyperparameters,
        "benchmark_runs": 1,
        "export_runtimes": False,
        **overrides,
    }
    return JobConfig(**values)
