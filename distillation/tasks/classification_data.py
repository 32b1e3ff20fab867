"""Classification records → label ids and token ids, for the teacher and the student, and the
batches they train on.

Label names follow the teacher's head when it has one (see `labels.label_index`); texts are
truncated to the data's `max_seq_length` and to what both models can take. A student with a
tokenizer of its own reads its own tokens, and its examples carry the teacher's too (named
`teacher_<name>`), so the teacher can run on the same batch. Batches are padded per batch
(`DataCollatorWithPadding`), and `training.fit` groups them by length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from distillation.config import DataSpec, JobConfig
from distillation.data.augment import Augmenter
from distillation.data.labels import label_index, label_text, output_label_names
from distillation.data.records import Record, read_file
from distillation.models.info import CLASSIFICATION, ModelInfo, max_input_length
from distillation.models.loading import load_config, load_tokenizer
from distillation.tasks.base import TRAIN_EVAL_LIMIT, Side, TaskData
from distillation.training.loop import Features

TEACHER_PREFIX = "teacher_"


# The label of an example no one labelled (transfer texts, augmented ones): the hard-label loss
# skips it (PyTorch's `ignore_index`), the soft-target losses learn the teacher's answer on it.
UNLABELLED = -100


@dataclass
class Columns:
    text: str
    pair: str | None
    label: str | None

    @classmethod
    def for_train(cls, spec: DataSpec) -> Columns:
        return cls(spec.text_column, spec.text_pair_column, spec.label_column)

    @classmethod
    def for_transfer(cls, spec: DataSpec) -> Columns:
        return cls(spec.text_column, spec.text_pair_column, None)

    @classmethod
    def for_validation(cls, spec: DataSpec) -> Columns:
        return cls(
            spec.validation_text_column or spec.text_column,
            spec.validation_text_pair_column or spec.text_pair_column,
            spec.validation_label_column or spec.label_column,
        )


def read_records(path: Path, columns: Columns) -> list[Record]:
    """The file's records; ValueError naming the file and line when a column is missing."""
    records = read_file(path).records
    wanted = [c for c in (columns.text, columns.pair, columns.label) if c]
    for number, record in enumerate(records, start=1):
        missing = [c for c in wanted if record.get(c) in (None, "")]
        if missing:
            raise ValueError(f"{path.name}: record {number} has no {', '.join(missing)}")
    return records


def encode(
    records: Sequence[Record],
    columns: Columns,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    index: dict[str, int],
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> list[Features]:
    """Token ids and label ids per record (`UNLABELLED` where `columns` name no label);
    `teacher_*` ids too when the teacher tokenises apart."""
    if not records:
        return []
    texts = [str(r[columns.text]) for r in records]
    pairs = [str(r[columns.pair]) for r in records] if columns.pair else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    features = [{k: encoded[k][i] for k in encoded} for i in range(len(records))]
    if teacher_tokenizer is not None:
        teacher = teacher_tokenizer(texts, pairs, truncation=True, max_length=max_length)
        for i, row in enumerate(features):
            row.update({TEACHER_PREFIX + k: teacher[k][i] for k in teacher})
    for row, record in zip(features, records, strict=True):
        row["labels"] = (index[label_text(record[columns.label])] if columns.label is not None
                         else UNLABELLED)
    return features


def extra_records(config: JobConfig, train_records: Sequence[Record],
                  mask_token: str | None) -> tuple[list[Record], dict[str, int]]:
    """The transfer file's texts and the augmented ones, as unlabelled records, with how many
    of each (`{"transfer": n, "augmented": m}`)."""
    columns = Columns.for_transfer(config.data)
    transfer = read_records(config.transfer_file, columns) if config.transfer_file else []
    records = list(transfer)
    augmented: list[Record] = []
    if config.augmentation is not None:
        sources = [*train_records, *transfer]
        texts = [str(r[columns.text]) for r in sources]
        augmenter = Augmenter(config.augmentation, texts, mask_token=mask_token,
                              seed=config.hyperparameters.seed)
        for index, text in augmenter.texts(texts):
            record = {columns.text: text}
            if columns.pair:
                record[columns.pair] = sources[index][columns.pair]
            augmented.append(record)
    return records + augmented, {"transfer": len(transfer), "augmented": len(augmented)}


class PairedCollator:
    """Pads student inputs (and `teacher_*` inputs, when present) with their own tokenizers."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.student = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        self.teacher = (DataCollatorWithPadding(teacher_tokenizer, return_tensors="pt")
                        if teacher_tokenizer is not None else None)

    def __call__(self, rows: list[Features]) -> dict[str, Tensor]:
        student = [{k: v for k, v in r.items() if not k.startswith(TEACHER_PREFIX)} for r in rows]
        batch = dict(self.student(student))
        if self.teacher is not None and any(k.startswith(TEACHER_PREFIX) for k in rows[0]):
            n = len(TEACHER_PREFIX)
            teacher = [{k[n:]: v for k, v in r.items() if k.startswith(TEACHER_PREFIX)}
                       for r in rows]
            batch.update({TEACHER_PREFIX + k: v for k, v in self.teacher(teacher).items()})
        return batch


def _same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a is b or (type(a) is type(b) and a.get_vocab() == b.get_vocab())


def prepare_data(config: JobConfig, teacher_info: ModelInfo) -> TaskData:
    """Read and encode the training (and validation) file for the teacher and the student."""
    teacher_tokenizer = load_tokenizer(config.teacher_path)
    teacher_config = load_config(config.teacher_path)
    student_tokenizer, student_config = teacher_tokenizer, teacher_config
    if config.student.model_path is not None:
        student_config = load_config(config.student.model_path)
        # A student directory with no tokenizer of its own reads the teacher's tokens.
        with contextlib.suppress(OSError, ValueError):
            student_tokenizer = load_tokenizer(config.student.model_path)
    separate = not _same_tokenizer(teacher_tokenizer, student_tokenizer)
    max_length = min(config.data.max_seq_length,
                     max_input_length(teacher_config, teacher_tokenizer),
                     max_input_length(student_config, student_tokenizer))

    train_columns = Columns.for_train(config.data)
    train_records = read_records(config.train_file, train_columns)
    if config.validation_file is not None:
        eval_columns = Columns.for_validation(config.data)
        eval_records = read_records(config.validation_file, eval_columns)
        eval_split = "validation"
    else:
        eval_columns, eval_records = train_columns, train_records[:TRAIN_EVAL_LIMIT]
        eval_split = "train"

    teacher_labels = teacher_info.labels if teacher_info.task == CLASSIFICATION else None
    values: list[Any] = [r[str(train_columns.label)] for r in train_records]
    values += [r[str(eval_columns.label)] for r in eval_records]
    index = label_index(values, teacher_labels)
    labels = output_label_names(index, teacher_labels)

    def teacher_side(records: list[Any], columns: Columns) -> list[Features]:
        return encode(records, columns, teacher_tokenizer, max_length=max_length, index=index)

    teacher_train = teacher_side(train_records, train_columns)
    teacher_eval = teacher_side(eval_records, eval_columns)
    extra, counts = extra_records(config, train_records, teacher_tokenizer.mask_token)
    transfer_columns = Columns.for_transfer(config.data)
    if separate:
        train = [
            *encode(train_records, train_columns, student_tokenizer, max_length=max_length,
                    index=index, teacher_tokenizer=teacher_tokenizer),
            *encode(extra, transfer_columns, student_tokenizer, max_length=max_length,
                    index=index, teacher_tokenizer=teacher_tokenizer),
        ]
        student_eval = encode(eval_records, eval_columns, student_tokenizer,
                              max_length=max_length, index=index)
    else:
        # The teacher fine-tunes on the labelled rows only; the student learns from all of them.
        train = teacher_train + teacher_side(extra, transfer_columns) if extra else teacher_train
        student_eval = teacher_eval
    return TaskData(
        teacher=Side(teacher_tokenizer, teacher_train, teacher_eval,
                     PairedCollator(teacher_tokenizer)),
        student=Side(student_tokenizer, train, student_eval,
                     PairedCollator(student_tokenizer, teacher_tokenizer if separate else None)),
        eval_split=eval_split, labels=labels, teacher_prefix=TEACHER_PREFIX if separate else "",
        max_length=max_length, sources={"labelled": len(train_records), **counts},
    )


def with_student_vocabulary(data: TaskData, tokenizer: PreTrainedTokenizerBase,
                            new_id: Mapping[int, int]) -> TaskData:
    """The data with the student's token ids re-numbered to a pruned vocabulary (`prune`).

    The student's training examples then carry the teacher's own inputs as `teacher_*`, as for
    a student that tokenises apart, so the teacher, and the teacher cache's fingerprint of its
    inputs, still see the teacher's ids. A lookup rather than a second tokenisation: the
    student's examples stay the very ones the teacher's are, position for position.
    """
    teacher_keys = list(data.teacher.tokenizer.model_input_names)

    def renumber(row: Features, *, with_teacher: bool) -> Features:
        out = {**row, "input_ids": [new_id[i] for i in row["input_ids"]]}
        if with_teacher and not data.separate_tokenizers:
            out.update({TEACHER_PREFIX + k: row[k] for k in teacher_keys if k in row})
        return out

    train = [renumber(row, with_teacher=True) for row in data.student.train]
    evaluation = [renumber(row, with_teacher=False) for row in data.student.evaluation]
    student = Side(tokenizer, train, evaluation, PairedCollator(tokenizer, data.teacher.tokenizer))
    return replace(data, student=student, teacher_prefix=TEACHER_PREFIX,
                   renumbered=not data.separate_tokenizers)
