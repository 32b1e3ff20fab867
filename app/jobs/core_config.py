"""From a stored job to the training core's config: the one place that maps the API's request
schema onto `distillation.config.JobConfig` (model refs and file ids resolved to paths)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from app.files.service import file_path, get_file
from app.jobs import workspace
from app.jobs.schemas import JobCreate
from app.jobs.tables import JobRow
from app.models.service import resolve_model_ref
from app.settings import Settings
from distillation.config import (
    AugmentSpec,
    DataGenerationSpec,
    DataSpec,
    FinetuneSpec,
    Hyperparameters,
    JobConfig,
    LossSpec,
    StudentSpec,
)
from distillation.layout import generated_set_path


def stored_request(job: JobRow) -> JobCreate:
    """The job's request, read back through the schema it was validated with."""
    return JobCreate.model_validate(job.request)


def _file(session: Session, job: JobRow, file_id: str | None, *, field: str,
          settings: Settings) -> Path | None:
    if file_id is None:
        return None
    row = get_file(session=session, tenant_id=job.tenant_id, file_id=file_id)
    if row is None:
        raise ValueError(f"{field} {file_id!r} was deleted before the job ran")
    return file_path(row, settings=settings)


def to_job_config(job: JobRow, *, session: Session, settings: Settings) -> JobConfig:
    """The training core's config for a job row, writing into the folder of its current
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
    arch = request.student.architecture
    finetune = request.teacher.finetune
    data_generation = _data_generation(session, job, request, settings=settings)
    return JobConfig(
        task=request.task,
        teacher_path=teacher.path,
        teacher_name=request.teacher.model,
        teacher_finetune=FinetuneSpec(**finetune.model_dump()) if finetune else None,
        student=StudentSpec(
            model_path=student_path,
            architecture=arch.model_dump(exclude_none=True) if arch else None,
            init=request.student.init,
            prune_vocabulary=request.student.prune_vocabulary,
            target=request.student.target.model_dump(exclude_none=True)
            if request.student.target else None,
        ),
        train_file=train_path,
        validation_file=_file(session, job, request.validation_file, field="validation_file",
                              settings=settings),
        transfer_file=_file(session, job, request.transfer_file, field="transfer_file",
                            settings=settings),
        augmentation=AugmentSpec(methods=tuple(request.augmentation.methods),
                                 multiplier=request.augmentation.multiplier)
        if request.augmentation else None,
        data=DataSpec(**request.data.model_dump()),
        temperature=request.distillation.temperature,
        temperature_end=request.distillation.temperature_end,
        losses=[LossSpec(type=loss.type, weight=loss.weight, weight_end=loss.weight_end,
                         beta=loss.beta, layer_map=loss.layer_map)
                for loss in request.distillation.losses],
        hyperparameters=Hyperparameters(**request.hyperparameters.model_dump()),
        output_dir=workspace.output_dir(settings, job.id, job.attempts),
        work_dir=workspace.work_dir(settings, job.id, job.attempts),
        export_runtimes=settings.export_runtimes,
        data_generation=data_generation,
        # The generated set, in the attempt's work folder: the worker registers it as a file.
        generated_file=generated_set_path(workspace.work_dir(settings, job.id, job.attempts))
        if data_generation is not None else None,
    )


def _data_generation(session: Session, job: JobRow, request: JobCreate, *,
                     settings: Settings) -> DataGenerationSpec | None:
    """The request's `data_generation`, its examples file resolved to a path."""
    spec = getattr(request, "data_generation", None)
    if spec is None:
        return None
    examples = _file(session, job, spec.examples_file, field="data_generation.examples_file",
                     settings=settings)
    assert examples is not None
    return DataGenerationSpec(task_description=spec.task_description, examples_file=examples,
                              num_samples=spec.num_samples, temperature=spec.temperature)
