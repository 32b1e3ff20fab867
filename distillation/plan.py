"""A job's config in two halves: the plan (everything its request decides) and the paths (where
its models and files are on the machine that runs it).

The API maps a request onto a `JobPlan` once, checks it (`job_checks`) and stores it with the
job; each attempt resolves the paths from the ids the request names (they differ by machine and
by attempt) and runs `plan.config(paths)`. Tests and benchmarks build a `JobConfig` directly;
`plan_of` gives its plan back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from distillation.config import (
    AugmentSpec,
    DataGenerationSpec,
    DataSpec,
    FinetuneSpec,
    GenerationSpec,
    Hyperparameters,
    JobConfig,
    LossSpec,
    OnPolicySpec,
    StudentSpec,
)

# JobConfig's fields that are neither plan nor paths: how this machine runs the job.
RUN_SETTINGS = ("device", "benchmark_runs", "export_runtimes", "teacher_cache_max_bytes",
                "cpu_bf16")


@dataclass
class DataGenerationPlan:
    """`DataGenerationSpec` without the path of its examples file."""

    task_description: str
    num_samples: int
    temperature: float

    def spec(self, examples_file: Path) -> DataGenerationSpec:
        return DataGenerationSpec(task_description=self.task_description,
                                  examples_file=examples_file, num_samples=self.num_samples,
                                  temperature=self.temperature)


@dataclass
class JobPlan:
    """`JobConfig` less its paths and run settings: the same fields, the same defaults (a test
    holds them in step); `student.model_path` is always None here (`JobPaths.student_model`)."""

    task: str
    student: StudentSpec
    teacher_name: str = "teacher"
    teacher_finetune: FinetuneSpec | None = None
    augmentation: AugmentSpec | None = None
    data: DataSpec = field(default_factory=DataSpec)
    temperature: float = 2.0
    temperature_end: float | None = None
    losses: list[LossSpec] = field(
        default_factory=lambda: [LossSpec("kl", 0.5), LossSpec("ce", 0.5)]
    )
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    method: str = "token"
    on_policy: OnPolicySpec = field(default_factory=OnPolicySpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    data_generation: DataGenerationPlan | None = None

    def config(self, paths: JobPaths, **run: Any) -> JobConfig:
        """The core's config of this plan at `paths`; `run` sets `RUN_SETTINGS`."""
        if self.data_generation is not None and paths.examples_file is None:
            raise ValueError("a job that generates data needs the path of its examples file")
        same = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("student", "data_generation")}
        return JobConfig(
            **same,
            student=replace(self.student, model_path=paths.student_model),
            data_generation=self.data_generation.spec(paths.examples_file)
            if self.data_generation is not None and paths.examples_file is not None else None,
            teacher_path=paths.teacher, train_file=paths.train_file,
            validation_file=paths.validation_file, transfer_file=paths.transfer_file,
            output_dir=paths.output_dir, work_dir=paths.work_dir,
            generated_file=paths.generated_file, **run,
        )


@dataclass(frozen=True)
class JobPaths:
    """Where a job's models and files are on this machine, for one attempt."""

    teacher: Path
    train_file: Path
    output_dir: Path
    work_dir: Path
    student_model: Path | None = None
    validation_file: Path | None = None
    transfer_file: Path | None = None
    examples_file: Path | None = None
    generated_file: Path | None = None


def plan_of(config: JobConfig) -> JobPlan:
    """The plan of a config (its paths and run settings left out)."""
    names = {f.name for f in fields(JobPlan)} - {"student", "data_generation"}
    generation = config.data_generation
    return JobPlan(
        **{name: getattr(config, name) for name in names},
        student=replace(config.student, model_path=None),
        data_generation=DataGenerationPlan(
            task_description=generation.task_description, num_samples=generation.num_samples,
            temperature=generation.temperature) if generation is not None else None,
    )

