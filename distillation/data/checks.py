"""Checks of records that the API runs at job creation (classification labels; causal-LM
prompts and conversations), so a file of the wrong shape is a 400 naming the field and the line
instead of a job that fails in the worker."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from distillation.data.chat import (
    CHAT_COLUMN,
    ChatFileCheck,
    conversation_problem,
)
from distillation.data.labels import label_index, label_text

Record = dict[str, Any]
# More distinct labels than this is a label column of ids or free text, not classes; the cap
# also bounds what the API holds while it reads a large file's labels.
MAX_LABELS = 10_000


@dataclass
class RecordProblem:
    param: str
    message: str
    code: str = "invalid_records"


def _is_label(value: Any) -> bool:
    """A label is a string or a whole number (the contract's "string or integer")."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and bool(value.strip())


def classification_labels(
    records: Iterable[Record], *, file_param: str, columns: dict[str, str | None]
) -> tuple[set[str], RecordProblem | None]:
    """The distinct labels of `records` (read once, as they come), or the first record that has
    no usable text or label, or more than MAX_LABELS classes.

    `columns` maps the request field (`data.text_column`, ..., `data.label_column`) to the column.
    """
    label_param = next(p for p in columns if p.endswith("label_column"))
    labels: set[str] = set()
    for number, record in enumerate(records, start=1):
        for param, column in columns.items():
            if column is None:
                continue
            value = record.get(column)
            if param == label_param:
                if not _is_label(value):
                    return labels, RecordProblem(
                        file_param,
                        f"record {number} of {file_param}: label {column!r} must be a string or an "
                        f"integer, got {value!r}",
                    )
                labels.add(label_text(value))
                if len(labels) > MAX_LABELS:
                    return labels, RecordProblem(
                        file_param,
                        f"{file_param} has more than {MAX_LABELS} distinct labels in {column!r} "
                        f"(record {number}): is {param} the column of classes?",
                    )
            elif value is None or isinstance(value, (list, dict)) or not str(value).strip():
                return labels, RecordProblem(
                    file_param,
                    f"record {number} of {file_param}: {column!r} ({param}) must be a non-empty "
                    f"text, got {value!r}",
                )
    return labels, None


def check_label_sets(
    train: set[str], validation: set[str] | None, teacher_labels: Sequence[str] | None
) -> RecordProblem | None:
    """At least two classes; validation labels the model can know; labels the teacher's head knows."""
    if len(train) < 2:
        return RecordProblem("training_file",
                             f"training_file has {len(train)} class(es) ({', '.join(sorted(train))}); "
                             "a classifier needs at least two")
    try:
        label_index(train | (validation or set()), teacher_labels)
    except ValueError as exc:
        return RecordProblem("data.label_column", f"data.label_column: {exc}")
    if validation is not None and not teacher_labels and not validation <= train:
        extra = sorted(validation - train)
        return RecordProblem("validation_file",
                             f"validation_file has labels the training file never uses: "
                             f"{', '.join(extra[:10])}")
    return None


def causal_records_problem(
    records: Iterable[tuple[int, Record]], *, file_param: str, columns: dict[str, str | None],
    chat: bool,
) -> RecordProblem | None:
    """The first problem of a causal-LM file's (line, record)s: a chat record that is no sound
    conversation (`chat.conversation_problem`), or chat and other records mixed. A prompt with
    no answer (a conversation ending with the user's turn) is no problem: the teacher answers it
    (`distillation.methods`). `columns` maps the request fields to the columns read."""
    check = ChatFileCheck()
    for line, record in records:
        where = f"{file_param} line {line}"
        if chat:
            # A file whose `messages` are no lists at all is read as chat too: each record says so.
            problem = check.problem(record, line) or (
                found.message if (found := conversation_problem(record.get(CHAT_COLUMN)))
                else None)
            if problem is not None:
                return RecordProblem(file_param, f"{where}: {problem}")
    return None
