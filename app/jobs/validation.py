"""Checks of a job request against the tenant's files and models, before anything is created.

Field-level ranges are in the schemas; here is what needs the database or a model's config.
Every problem is an InvalidRequest naming the field, so no job is ever queued to fail later.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.errors import InvalidRequest
from app.files.service import get_file
from app.files.tables import FileRow
from app.jobs.schemas import JobCreate
from app.models.service import ResolvedModel, resolve_model_ref
from app.settings import Settings
from worker.distillation.config import SUPPORTED_TASKS, LossSpec
from worker.distillation.inspect import BASE_TASK
from worker.distillation.losses import check_losses
from worker.distillation.students import check_architecture


@dataclass
class CheckedJob:
    training_file: FileRow
    validation_file: FileRow | None
    teacher: ResolvedModel
    student: ResolvedModel | None


def _check_file(
    session: Session, *, tenant_id: str, file_id: str, purpose: str, param: str
) -> FileRow:
    row = get_file(session=session, tenant_id=tenant_id, file_id=file_id)
    if row is None:
        raise InvalidRequest(
            f"No file {file_id!r}: upload it with POST /v1/files first.",
            param=param, code="file_not_found",
        )
    if row.purpose != purpose:
        raise InvalidRequest(
            f"File {file_id!r} was uploaded with purpose {row.purpose!r}; {param} needs a file "
            f"uploaded with purpose {purpose!r}.",
            param=param, code="wrong_file_purpose",
        )
    return row


def _check_columns(row: FileRow, wanted: dict[str, str | None], *, file_param: str) -> None:
    for param, column in wanted.items():
        if column is not None and column not in row.columns:
            raise InvalidRequest(
                f"Column {column!r} is not in {file_param} {row.id!r} (its columns: "
                f"{', '.join(map(str, row.columns))}); set {param} to the right column.",
                param=param, code="missing_column",
            )


def check_job_request(
    *, session: Session, tenant_id: str, settings: Settings, request: JobCreate
) -> CheckedJob:
    """Validate a job request against what the tenant has; raises InvalidRequest naming the field."""
    if request.task not in SUPPORTED_TASKS:
        raise InvalidRequest(
            f"Unknown task {request.task!r}; supported: {', '.join(SUPPORTED_TASKS)}.",
            param="task", code="unsupported_task",
        )
    data = request.data
    train = _check_file(
        session, tenant_id=tenant_id, file_id=request.training_file, purpose="train",
        param="training_file",
    )
    _check_columns(
        train,
        {"data.text_column": data.text_column, "data.text_pair_column": data.text_pair_column,
         "data.label_column": data.label_column},
        file_param="training_file",
    )
    validation = None
    if request.validation_file is not None:
        validation = _check_file(
            session, tenant_id=tenant_id, file_id=request.validation_file, purpose="validation",
            param="validation_file",
        )
        _check_columns(
            validation,
            {
                "data.validation_text_column": data.validation_text_column or data.text_column,
                "data.validation_text_pair_column": (
                    data.validation_text_pair_column or data.text_pair_column
                ),
                "data.validation_label_column": data.validation_label_column or data.label_column,
            },
            file_param="validation_file",
        )

    teacher = resolve_model_ref(
        session=session, tenant_id=tenant_id, settings=settings, ref=request.teacher.model,
        param="teacher.model",
    )
    if teacher.info.task == BASE_TASK and request.teacher.finetune is None:
        raise InvalidRequest(
            f"Teacher {request.teacher.model!r} is a base model with no {request.task} head: add "
            '"teacher": {"finetune": {"epochs": 1}} to fine-tune it on the training file first.',
            param="teacher.finetune", code="teacher_needs_finetune",
        )
    if teacher.info.task not in (BASE_TASK, request.task):
        raise InvalidRequest(
            f"Teacher {request.teacher.model!r} is a {teacher.info.task} model, not {request.task}.",
            param="teacher.model", code="wrong_model_task",
        )

    student = None
    if request.student.model is not None:
        student = resolve_model_ref(
            session=session, tenant_id=tenant_id, settings=settings, ref=request.student.model,
            param="student.model",
        )
        student_layers = student.info.num_layers
    else:
        assert request.student.architecture is not None
        arch = request.student.architecture.model_dump(exclude_none=True)
        problems = check_architecture(arch, teacher.info)
        if problems:
            param, message = problems[0]
            raise InvalidRequest(message, param=param, code="invalid_architecture")
        student_layers = arch.get("num_layers", teacher.info.num_layers)

    specs = [LossSpec(type=x.type, weight=x.weight, layer_map=x.layer_map)
             for x in request.distillation.losses]
    problems = check_losses(
        specs, request.distillation.temperature,
        student_layers=student_layers, teacher_layers=teacher.info.num_layers,
    )
    if problems:
        param, message = problems[0]
        raise InvalidRequest(message, param=param, code="invalid_loss")
    return CheckedJob(training_file=train, validation_file=validation, teacher=teacher,
                      student=student)
