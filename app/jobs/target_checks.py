"""A student sized to a target (`student.target`): refused at job creation when no candidate
could meet it, with what the closest candidate reaches (`distillation.students.sizing`).

The check counts parameters at the vocabulary the student would have: pruned to the ids of the
job's files (their first `validation_max_records` records each, tokenised here with the
teacher's tokenizer) when the job prunes, the teacher's whole vocabulary otherwise. A latency
target is timed on this machine, on one candidate.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from app.files.service import file_path
from app.files.tables import FileRow
from app.jobs.schemas import JobCreate
from app.jobs.vocabulary import vocabulary_of
from app.kit.errors import InvalidRequest
from app.models.service import ResolvedModel
from app.settings import Settings
from distillation.data.records import iter_file
from distillation.models.loading import load_config
from distillation.students.prune import pruned_size_of_texts, prunes
from distillation.students.sizing import TargetUnreachable, check_target, target_task_problem
from distillation.tasks import get_task


def _prunes(request: JobCreate, teacher: ResolvedModel, *, settings: Settings) -> bool:
    return prunes(request.student.prune_vocabulary, sized_to_target=True,
                  task=get_task(request.task),
                  tokenizer_kind=lambda: vocabulary_of(teacher, param="teacher.model",
                                                       settings=settings).kind)


def _texts(request: JobCreate, files: list[FileRow | None], *,
           settings: Settings) -> Iterator[tuple[str, str | None]]:
    """(text, pair or None) of the first `validation_max_records` records of each of the job's
    files, streamed from disk (the validation file, second in `files`, may name its columns
    differently)."""
    data = request.data
    for n, row in enumerate(files):
        if row is None:
            continue
        text = (data.validation_text_column or data.text_column) if n == 1 else data.text_column
        pair = ((data.validation_text_pair_column or data.text_pair_column) if n == 1
                else data.text_pair_column)
        for record in islice(iter_file(file_path(row, settings=settings)),
                             settings.validation_max_records):
            yield (str(record.get(text, "")),
                   str(record.get(pair or "", "")) if data.text_pair_column else None)


def check_student_target(request: JobCreate, teacher: ResolvedModel,
                         files: list[FileRow | None], *, settings: Settings) -> None:
    """InvalidRequest naming `student.target.<key>` when the target is out of reach."""
    assert request.student.target is not None
    problem = target_task_problem(request.task)
    if problem is not None:
        raise InvalidRequest(problem, param="student.target", code="unsupported_option")
    target = request.student.target.model_dump(exclude_none=True)
    config = load_config(teacher.path)
    vocab = int(config.vocab_size)
    if _prunes(request, teacher, settings=settings):
        examples = _texts(request, files, settings=settings)
        vocab = pruned_size_of_texts(teacher.path, examples, max_length=request.data.max_seq_length)
    try:
        check_target(config, target, vocab_size=vocab)
    except TargetUnreachable as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="target_unreachable") from None
