"""From a job request to the training core's config: the one place that maps the API's request
schema onto the core (`plan_job`: a `distillation.plan.JobPlan`, built once when the request is
validated and stored with the job), and the paths each attempt adds to it (`to_job_config`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from app.files.service import file_path, get_file
from app.jobs import workspace
from app.jobs.schemas import JobCreate
from app.jobs.tables import JobRow
from app.models.service import resolve_model_ref
from app.settings import Settings
from distillation.config import (
    BUDGET_MAX_EPOCHS,
    CLASSIFIER_STUDENT_EPOCHS,
    CLASSIFIER_STUDENT_LEARNING_RATE,
    LM_STUDENT_LEARNING_RATE,
    ON_POLICY_TEMPERATURE,
    AugmentSpec,
    DataSpec,
    FinetuneSpec,
    GenerationSpec,
    Hyperparameters,
    JobConfig,
    LossSpec,
    OnPolicySpec,
    StudentSpec,
)
from distillation.layout import generated_set_path
from distillation.models.info import CAUSAL_LM, CLASSIFICATION
from distillation.plan import DataGenerationPlan, JobPaths, JobPlan

_PLAN = TypeAdapter(JobPlan)
# The worker's `cpu_bf16` setting as the core's: None lets the core ask the CPU.
CPU_BF16: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def stored_request(job: JobRow) -> JobCreate:
    """The job's request, read back through the schema it was validated with."""
    return JobCreate.model_validate(job.request)


def plan_job(request: JobCreate) -> JobPlan:
    """The core's plan of a (schema-valid) request: everything but where its models and files
    are, which each attempt resolves from the ids the request names."""
    arch = request.student.architecture
    finetune = request.teacher.finetune
    target = request.student.target
    augmentation = request.augmentation
    distillation = request.distillation
    on_policy = {name: value for name, value in (("lambda_", distillation.lambda_),
                                                 ("beta", distillation.beta))
                 if value is not None}
    writes = request.data_generation
    return JobPlan(
        task=request.task,
        teacher_name=request.teacher.model,
        teacher_finetune=FinetuneSpec(**finetune.model_dump()) if finetune else None,
        student=StudentSpec(
            architecture=arch.model_dump(exclude_none=True) if arch else None,
            init=request.student.init,
            prune_vocabulary=request.student.prune_vocabulary,
            target=target.model_dump(exclude_none=True) if target else None,
        ),
        augmentation=AugmentSpec(methods=tuple(augmentation.methods),
                                 multiplier=augmentation.multiplier) if augmentation else None,
        data=DataSpec(**dataclasses.asdict(request.data)),
        temperature=distillation.temperature,
        temperature_end=distillation.temperature_end,
        losses=[LossSpec(type=loss.type, weight=loss.weight, weight_end=loss.weight_end,
                         beta=loss.beta, layer_map=loss.layer_map)
                for loss in distillation.losses],
        hyperparameters=Hyperparameters(**request.hyperparameters.model_dump()),
        method=distillation.method,
        on_policy=OnPolicySpec(**on_policy),
        generation=GenerationSpec(**request.generation.model_dump())
        if request.generation else GenerationSpec(),
        data_generation=DataGenerationPlan(
            task_description=writes.task_description, num_samples=writes.num_samples,
            temperature=writes.temperature) if writes else None,
    )


def with_task_defaults(request: JobCreate) -> JobCreate:
    """The request with the defaults that depend on what else it asks filled in where it names
    none, so the job shows what runs: on-policy distillation at `ON_POLICY_TEMPERATURE`, a
    causal-LM student the service builds at `LM_STUDENT_LEARNING_RATE`, a classifier student it
    builds at `CLASSIFIER_STUDENT_LEARNING_RATE` for `CLASSIFIER_STUDENT_EPOCHS`, a time budget
    at most `BUDGET_MAX_EPOCHS` epochs (named `epochs` are the budget's ceiling instead)."""
    distillation, hp = request.distillation, request.hyperparameters
    changes: dict[str, Any] = {}
    hp_changes: dict[str, Any] = {}
    if distillation.method == "on-policy" and "temperature" not in distillation.model_fields_set:
        changes["distillation"] = distillation.model_copy(
            update={"temperature": ON_POLICY_TEMPERATURE})
    built = request.student.model is None  # the service builds the student from the teacher
    named = hp.model_fields_set
    if built and request.task == CAUSAL_LM and "learning_rate" not in named:
        hp_changes["learning_rate"] = LM_STUDENT_LEARNING_RATE
    if built and request.task == CLASSIFICATION:
        if "learning_rate" not in named:
            hp_changes["learning_rate"] = CLASSIFIER_STUDENT_LEARNING_RATE
        if "epochs" not in named:
            hp_changes["epochs"] = CLASSIFIER_STUDENT_EPOCHS
    if hp.time_budget_minutes is not None and "epochs" not in named:
        hp_changes["epochs"] = BUDGET_MAX_EPOCHS
    if hp_changes:
        changes["hyperparameters"] = hp.model_copy(update=hp_changes)
    return request.model_copy(update=changes) if changes else request


def dump_plan(plan: JobPlan) -> dict[str, Any]:
    """The plan as the job row stores it (JSON)."""
    return _PLAN.dump_python(plan, mode="json")  # type: ignore[no-any-return]


def job_plan(job: JobRow) -> JobPlan:
    """The plan stored with the job; for a job created before plans were stored, its request's."""
    if job.plan is None:
        return plan_job(stored_request(job))
    return _PLAN.validate_python(job.plan)


def _file(session: Session, job: JobRow, file_id: str | None, *, field: str,
          settings: Settings) -> Path | None:
    if file_id is None:
        return None
    row = get_file(session=session, tenant_id=job.tenant_id, file_id=file_id)
    if row is None:
        raise ValueError(f"{field} {file_id!r} was deleted before the job ran")
    return file_path(row, settings=settings)


def to_job_config(job: JobRow, *, session: Session, settings: Settings) -> JobConfig:
    """The training core's config for a job row: its stored plan at the paths of its current
    attempt (`job.attempts`, as its claim set it)."""
    request = stored_request(job)
    teacher = resolve_model_ref(session=session, tenant_id=job.tenant_id, settings=settings,
                                ref=request.teacher.model, param="teacher.model", weights=True)
    student_path = None
    if request.student.model is not None:
        student_path = resolve_model_ref(session=session, tenant_id=job.tenant_id,
                                         settings=settings, ref=request.student.model,
                                         param="student.model", weights=True).path
    train_path = _file(session, job, request.training_file, field="training_file",
                       settings=settings)
    assert train_path is not None
    paths = JobPaths(
        teacher=teacher.path, student_model=student_path, train_file=train_path,
        validation_file=_file(session, job, request.validation_file, field="validation_file",
                              settings=settings),
        transfer_file=_file(session, job, request.transfer_file, field="transfer_file",
                            settings=settings),
        examples_file=_file(session, job, request.data_generation.examples_file,
                            field="data_generation.examples_file", settings=settings)
        if request.data_generation else None,
        output_dir=workspace.output_dir(settings, job.id, job.attempts),
        work_dir=workspace.work_dir(settings, job.id, job.attempts),
    )
    config = job_plan(job).config(paths, export_runtimes=settings.export_runtimes,
                                  teacher_cache_max_bytes=settings.teacher_cache_max_bytes,
                                  cpu_bf16=CPU_BF16[settings.cpu_bf16])
    if config.data_generation is not None:
        # The generated set, in the attempt's work folder: the worker registers it as a file.
        config.generated_file = generated_set_path(paths.work_dir)
    return config
