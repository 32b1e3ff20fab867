"""Checks of a job request against the tenant's files and models, before anything is created.

Field-level ranges are in the schemas, the rules on the job's plan and models in the core
(`distillation.job_checks`, which `run_job` checks again); here is what needs the database or
the files. Every problem is an InvalidRequest naming the field, so no job is ever queued to fail
later.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from sqlalchemy.orm import Session

from app.files.service import file_path, get_file
from app.files.tables import FileRow
from app.jobs.core_config import plan_job
from app.jobs.schemas import JobCreate
from app.jobs.target_checks import check_student_target
from app.jobs.vocabulary import vocabulary_of
from app.kit.errors import InvalidRequest
from app.models.service import ResolvedModel, resolve_model_ref
from app.settings import Settings
from distillation.data.chat import CHAT_COLUMN
from distillation.data.checks import causal_records_problem, check_label_sets, classification_labels
from distillation.data.records import iter_file, iter_lines
from distillation.job_checks import (
    MIN_GENERATION_EXAMPLES,
    Model,
    Problem,
    job_problems,
    task_problem,
)
from distillation.models.files import UnsafeModel, has_chat_template
from distillation.models.info import CAUSAL_LM
from distillation.plan import JobPlan
from distillation.tasks import get_task
from distillation.tasks.base import MissingColumns


@dataclass
class CheckedJob:
    plan: JobPlan  # the core's plan of the request, stored with the job
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


def _task_columns(plan: JobPlan, row: FileRow, *, validation: bool,
                  file_param: str | None = None) -> dict[str, str | None]:
    """{param: column} that the task reads from a training (or validation) file, or from
    another file of training records (`file_param`)."""
    try:
        return get_task(plan.task).record_columns(plan.data, row.columns, validation=validation)
    except MissingColumns as missing:
        file_param = file_param or ("validation_file" if validation else "training_file")
        raise InvalidRequest(
            f"{file_param} {row.id!r} has {missing.what} (its columns: "
            f"{', '.join(map(str, row.columns))}); {missing.hint}",
            param=missing.param, code="missing_column",
        ) from None


def _check_generation_fields(request: JobCreate) -> None:
    """Settings given for a method or a task that does not use them (the plan holds their
    defaults either way, so only the request tells that they were given)."""
    distillation = request.distillation
    for name, value in (("lambda", distillation.lambda_), ("beta", distillation.beta)):
        if value is not None and distillation.method != "on-policy":
            raise InvalidRequest(
                f"distillation.{name} is for distillation.method \"on-policy\"; this job's "
                f"method is {distillation.method!r}: leave distillation.{name} out, or set the "
                "method to \"on-policy\".", param=f"distillation.{name}",
                code="unsupported_option")
    task = get_task(request.task)
    if request.generation is not None and task.head != "generate":
        raise InvalidRequest(
            f"generation is for language-model jobs (causal-lm, seq2seq), whose answers a model "
            f"writes; a {task.name} job generates nothing.", param="generation",
            code="unsupported_option")


def _check_examples(session: Session, *, tenant_id: str, plan: JobPlan, file_id: str) -> None:
    """The example records the teacher writes prompts like: the tenant's training-records file,
    with enough of them."""
    param = "data_generation.examples_file"
    row = _check_file(session, tenant_id=tenant_id, file_id=file_id, purpose="train",
                      param=param)
    _check_columns(row, _task_columns(plan, row, validation=False, file_param=param),
                   file_param=param)
    if row.num_records < MIN_GENERATION_EXAMPLES:
        raise InvalidRequest(
            f"{param} {file_id!r} holds {row.num_records} record"
            f"{'' if row.num_records == 1 else 's'}; the teacher needs at least "
            f"{MIN_GENERATION_EXAMPLES} examples to write prompts like them.",
            param=param, code="too_few_examples")


def _refuse(problems: list[Problem]) -> None:
    if problems:
        first = problems[0]
        raise InvalidRequest(first.message, param=first.param, code=first.code)


def check_job_request(
    *, session: Session, tenant_id: str, settings: Settings, request: JobCreate
) -> CheckedJob:
    """Plan a job request and validate it against what the tenant has; raises InvalidRequest
    naming the field. The rules on the plan and its models are the core's (`job_checks`);
    here is what needs the database and the files."""
    if (unknown := task_problem(request.task)) is not None:
        _refuse([unknown])
    _check_generation_fields(request)
    plan = plan_job(request)
    train = _check_file(
        session, tenant_id=tenant_id, file_id=request.training_file, purpose="train",
        param="training_file",
    )
    _check_columns(train, _task_columns(plan, train, validation=False),
                   file_param="training_file")
    validation = None
    if request.validation_file is not None:
        validation = _check_file(
            session, tenant_id=tenant_id, file_id=request.validation_file, purpose="validation",
            param="validation_file",
        )
        _check_columns(validation, _task_columns(plan, validation, validation=True),
                       file_param="validation_file")
    transfer = None
    if request.transfer_file is not None:
        transfer = _check_file(session, tenant_id=tenant_id, file_id=request.transfer_file,
                               purpose="unlabeled", param="transfer_file")
        _check_columns(transfer, {"data.text_column": plan.data.text_column,
                                  "data.text_pair_column": plan.data.text_pair_column},
                       file_param="transfer_file")

    teacher = resolve_model_ref(
        session=session, tenant_id=tenant_id, settings=settings, ref=request.teacher.model,
        param="teacher.model",
    )
    student = None
    if request.student.model is not None:
        student = resolve_model_ref(
            session=session, tenant_id=tenant_id, settings=settings, ref=request.student.model,
            param="student.model",
        )

    def model(resolved: ResolvedModel, param: str) -> Model:
        return Model(resolved.info, lambda: vocabulary_of(resolved, param=param,
                                                          settings=settings))

    _refuse(job_problems(plan, model(teacher, "teacher.model"),
                         model(student, "student.model") if student is not None else None,
                         transfer_file=transfer is not None))
    if request.data_generation is not None:  # a task that writes data: the file it imitates
        _check_examples(session, tenant_id=tenant_id, plan=plan,
                        file_id=request.data_generation.examples_file)
    if get_task(plan.task).labelled:
        _check_classification_data(plan, train, validation, teacher, settings=settings)
    if plan.task == CAUSAL_LM:
        _check_causal_data(request, plan, train, validation, teacher, settings=settings)
    if plan.student.target is not None:
        check_student_target(plan, teacher, [train, validation, transfer], settings=settings)
    return CheckedJob(plan=plan, training_file=train, validation_file=validation,
                      teacher=teacher, student=student)


def _check_classification_data(
    plan: JobPlan, train: FileRow, validation: FileRow | None, teacher: ResolvedModel,
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
            columns=_task_columns(plan, row, validation=is_validation),
        )
        if problem is not None:
            raise InvalidRequest(problem.message, param=problem.param, code="invalid_records")
        label_sets[param] = labels
    problem = check_label_sets(label_sets["training_file"], label_sets.get("validation_file"),
                               teacher.info.labels if teacher.info.task == plan.task else None)
    if problem is not None:
        raise InvalidRequest(problem.message, param=problem.param, code="invalid_labels")


def _check_causal_data(
    request: JobCreate, plan: JobPlan, train: FileRow, validation: FileRow | None,
    teacher: ResolvedModel, *, settings: Settings,
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
            columns=_task_columns(plan, row, validation=is_validation))
        if problem is not None:
            raise InvalidRequest(problem.message, param=problem.param, code=problem.code)


def _has_chat_template(model: ResolvedModel) -> bool:
    try:
        return has_chat_template(model.path)
    except UnsafeModel as exc:
        raise InvalidRequest(f"teacher.model {model.ref!r}: {exc}.", param="teacher.model",
                             code="invalid_tokenizer") from None


