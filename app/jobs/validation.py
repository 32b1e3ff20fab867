"""Checks of a job request against the tenant's files and models, before anything is created.

Field-level ranges are in the schemas; here is what needs the database or a model's config.
Every problem is an InvalidRequest naming the field, so no job is ever queued to fail later.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from sqlalchemy.orm import Session

from app.files.service import file_path, get_file
from app.files.tables import FileRow
from app.jobs.schemas import JobCreate
from app.jobs.target_checks import check_student_target
from app.jobs.vocabulary import vocabulary_of
from app.kit.errors import InvalidRequest
from app.models.service import ResolvedModel, resolve_model_ref
from app.settings import Settings
from distillation.config import DataSpec, LossSpec
from distillation.data.augment import check_augmentation
from distillation.data.chat import CHAT_COLUMN
from distillation.data.checks import (
    causal_records_problem,
    check_label_sets,
    classification_labels,
)
from distillation.data.records import iter_file, iter_lines
from distillation.losses.checks import check_losses
from distillation.models.files import UnsafeModel, has_chat_template
from distillation.models.info import BASE_TASK, CAUSAL_LM
from distillation.students.build import check_architecture
from distillation.students.prune import pruning_problems
from distillation.tasks import TASKS, get_task
from distillation.tasks.base import MissingColumns


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


def _task_columns(
    request: JobCreate, row: FileRow, *, validation: bool
) -> dict[str, str | None]:
    """{param: column} that the task reads from a training (or validation) file."""
    try:
        return get_task(request.task).record_columns(
            DataSpec(**request.data.model_dump()), row.columns, validation=validation)
    except MissingColumns as missing:
        raise InvalidRequest(
            f"{'validation_file' if validation else 'training_file'} {row.id!r} has "
            f"{missing.what} (its columns: {', '.join(map(str, row.columns))}); {missing.hint}",
            param=missing.param, code="missing_column",
        ) from None


def check_job_request(
    *, session: Session, tenant_id: str, settings: Settings, request: JobCreate
) -> CheckedJob:
    """Validate a job request against what the tenant has; raises InvalidRequest naming the field."""
    if request.task not in TASKS:
        raise InvalidRequest(
            f"Unknown task {request.task!r}; supported: {', '.join(TASKS)}.",
            param="task", code="unsupported_task",
        )
    train = _check_file(
        session, tenant_id=tenant_id, file_id=request.training_file, purpose="train",
        param="training_file",
    )
    _check_columns(train, _task_columns(request, train, validation=False),
                   file_param="training_file")
    validation = None
    if request.validation_file is not None:
        validation = _check_file(
            session, tenant_id=tenant_id, file_id=request.validation_file, purpose="validation",
            param="validation_file",
        )
        _check_columns(validation, _task_columns(request, validation, validation=True),
                       file_param="validation_file")

    transfer = _check_extra_texts(session, tenant_id=tenant_id, request=request)

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
    elif request.student.target is not None:
        if any(x.layer_map for x in request.distillation.losses):
            raise InvalidRequest(
                "distillation.losses[].layer_map needs a student of a known depth: give "
                "student.architecture, or leave layer_map out (layers are then evenly spread).",
                param="student.target", code="invalid_loss")
        student_layers = 1  # layer losses spread the student's layers over the teacher's
    else:
        assert request.student.architecture is not None
        arch = request.student.architecture.model_dump(exclude_none=True)
        problems = check_architecture(arch, teacher.info)
        if problems:
            param, message = problems[0]
            raise InvalidRequest(message, param=param, code="invalid_architecture")
        student_layers = arch.get("num_layers", teacher.info.num_layers)

    specs = [LossSpec(type=x.type, weight=x.weight, layer_map=x.layer_map,
                      weight_end=x.weight_end, beta=x.beta)
             for x in request.distillation.losses]
    problems = check_losses(
        specs, request.distillation.temperature, temperature_end=request.distillation.temperature_end,
        student_layers=student_layers, teacher_layers=teacher.info.num_layers,
    )
    if problems:
        param, message = problems[0]
        raise InvalidRequest(message, param=param, code="invalid_loss")
    _check_pair(request, teacher, student, specs, settings=settings)
    if request.student.prune_vocabulary:
        problems = pruning_problems(
            get_task(request.task), vocabulary_of(teacher, param="teacher.model", settings=settings),
            vocabulary_of(student, param="student.model", settings=settings)
            if student is not None else None)
        if problems:
            param, message = problems[0]
            raise InvalidRequest(message, param=param, code="vocabulary_not_prunable")
    if get_task(request.task).labelled:
        _check_classification_data(request, train, validation, teacher, settings=settings)
    if request.task == CAUSAL_LM:
        _check_causal_data(request, train, validation, teacher, settings=settings)
    if request.student.target is not None:
        check_student_target(request, teacher, [train, validation, transfer], settings=settings)
    return CheckedJob(training_file=train, validation_file=validation, teacher=teacher,
                      student=student)


def _check_extra_texts(session: Session, *, tenant_id: str,
                       request: JobCreate) -> FileRow | None:
    """The transfer file and augmentation: a task that learns from unlabelled texts, a file
    uploaded as `unlabeled` with the text column(s), known augmentation methods."""
    task = get_task(request.task)
    for param, value in (("transfer_file", request.transfer_file),
                         ("augmentation", request.augmentation)):
        if value is not None and not task.transfer_data:
            raise InvalidRequest(
                f"{param} is for sequence-classification jobs (the teacher labels the extra "
                f"texts with its class probabilities); a {request.task} job learns from the "
                "training file's texts.", param=param, code="unsupported_option",
            )
    transfer = None
    if request.transfer_file is not None:
        transfer = _check_file(session, tenant_id=tenant_id, file_id=request.transfer_file,
                               purpose="unlabeled", param="transfer_file")
        _check_columns(transfer, {"data.text_column": request.data.text_column,
                                  "data.text_pair_column": request.data.text_pair_column},
                       file_param="transfer_file")
    if request.augmentation is not None:
        problems = check_augmentation(request.augmentation.methods,
                                      request.augmentation.multiplier)
        if problems:
            param, message = problems[0]
            raise InvalidRequest(message, param=param, code="invalid_augmentation")
    return transfer


def _check_classification_data(
    request: JobCreate, train: FileRow, validation: FileRow | None, teacher: ResolvedModel,
    *, settings: Settings,
) -> None:
    """Every record has its text and a string or integer label; two classes at least; labels
    the teacher's head (if it has one) knows. Reads the first `validation_max_records` records
    of each stored file, as a stream: the files table has the columns, not the labels."""
    label_sets: dict[str, set[str]] = {}
    for param, row, is_validation in (("training_file", train, False),
                                      ("validation_file", validation, True)):
        if row is None:
            continue
        # A sample: the checks run on the API's threads, the worker reads the whole file.
        records = islice(iter_file(file_path(row, settings=settings)),
                         settings.validation_max_records)
        labels, problem = classification_labels(
            records, file_param=param,
            columns=_task_columns(request, row, validation=is_validation),
        )
        if problem is not None:
            raise InvalidRequest(problem.message, param=problem.param, code="invalid_records")
        label_sets[param] = labels
    problem = check_label_sets(label_sets["training_file"], label_sets.get("validation_file"),
                               teacher.info.labels if teacher.info.task == request.task else None)
    if problem is not None:
        raise InvalidRequest(problem.message, param=problem.param, code="invalid_labels")


def _check_causal_data(
    request: JobCreate, train: FileRow, validation: FileRow | None, teacher: ResolvedModel,
    *, settings: Settings,
) -> None:
    """Chat records are sound conversations and the teacher has a chat template to render them;
    every prompt has its answer (token-level distillation learns from them). Reads the first
    `validation_max_records` records of each file, as a stream."""
    for param, row, is_validation in (("training_file", train, False),
                                      ("validation_file", validation, True)):
        if row is None:
            continue
        chat = CHAT_COLUMN in row.columns
        if chat and not _has_chat_template(teacher):
            raise InvalidRequest(
                f"{param} {row.id!r} holds chat records ({CHAT_COLUMN!r}), and the teacher "
                f"{request.teacher.model!r} has no chat template to render them with: use a chat "
                "model, or prompt + completion records.",
                param="teacher.model", code="no_chat_template")
        records = islice(iter_lines(file_path(row, settings=settings)),
                         settings.validation_max_records)
        problem = causal_records_problem(
            records, file_param=param, chat=chat,
            columns=_task_columns(request, row, validation=is_validation))
        if problem is not None:
            raise InvalidRequest(problem.message, param=problem.param, code=problem.code)


def _has_chat_template(model: ResolvedModel) -> bool:
    try:
        return has_chat_template(model.path)
    except UnsafeModel as exc:
        raise InvalidRequest(f"teacher.model {model.ref!r}: {exc}.", param="teacher.model",
                             code="invalid_tokenizer") from None


def _check_pair(
    request: JobCreate, teacher: ResolvedModel, student: ResolvedModel | None,
    specs: list[LossSpec], *, settings: Settings,
) -> None:
    """The teacher and the student can be distilled together with these losses: one kind and
    one vocabulary for token-level tasks; hidden states to compare for layer losses."""
    teacher_vocab = student_vocab = None
    if student is not None:
        teacher_vocab = vocabulary_of(teacher, param="teacher.model", settings=settings).fingerprint
        student_vocab = vocabulary_of(student, param="student.model", settings=settings).fingerprint
    student_info = student.info if student is not None else None
    task = get_task(request.task)
    problems = task.check_pair(teacher.info, student_info,
                               teacher_vocab=teacher_vocab, student_vocab=student_vocab)
    problems += task.check_pair_losses(
        specs, teacher.info, student_info,
        same_tokenizer=not (teacher_vocab and student_vocab and teacher_vocab != student_vocab),
    )
    if problems:
        param, message = problems[0]
        codes = {"student.model": "incompatible_student", "teacher.model": "incompatible_teacher"}
        raise InvalidRequest(message, param=param, code=codes.get(param, "invalid_loss"))
