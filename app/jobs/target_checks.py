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
from app.jobs.vocabulary import vocabulary_of
from app.kit.errors import InvalidRequest
from app.models.service import ResolvedModel
from app.settings import Settings
from distillation.data.records import iter_file
from distillation.models.loading import load_config
from distillation.plan import JobPlan
from distillation.students.prune import pruned_size_of_texts, prunes
from distillation.students.sizing import TargetUnreachable, check_target
from distillation.tasks import get_task


def _prunes(plan: JobPlan, teacher: ResolvedModel, *, settings: Settings) -> bool:
    return prunes(plan.student.prune_vocabulary, sized_to_target=True,
                  task=get_task(plan.task),
                  tokenizer_kind=lambda: vocabulary_of(teacher, param="teacher.model",
                                                       settings=settings).kind)


def _texts(plan: JobPlan, files: list[FileRow | None], *,
           settings: Settings) -> Iterator[tuple[str, str | None]]:
    """(text, pair or None) of the first `validation_max_records` records of each of the job's
    files, streamed from disk (the validation file, second in `files`, may name its columns
    differently)."""
    data = plan.data
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


def check_student_target(plan: JobPlan, teacher: ResolvedModel,
                         files: list[FileRow | None], *, settings: Settings) -> None:
    """InvalidRequest naming `student.target.<key>` when the target is out of reach (a task
    that cannot size its student to a target is refused before, by `job_checks`)."""
    assert plan.student.target is not None
    config = load_config(teacher.path)
    vocab = int(config.vocab_size)
    if _prunes(plan, teacher, settings=settings):
        examples = _texts(plan, files, settings=settings)
        vocab = pruned_size_of_texts(teacher.path, examples, max_length=plan.data.max_seq_length)
    try:
        check_target(config, plan.student.target, vocab_size=vocab, task=plan.task)
    except TargetUnreachable as exc:
        raise InvalidRequest(str(exc), param=exc.param, code="target_unreachable") from None
