"""Everything the loops need from the job's files: label names, tokenizers, encoded examples."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from distillation.config import JobConfig
from distillation.data import (
    Columns,
    Features,
    PairedCollator,
    encode,
    label_index,
    output_label_names,
    read_records,
)
from distillation.evaluate import TRAIN_EVAL_LIMIT
from distillation.inspect import ModelInfo
from distillation.predict import max_input_length


@dataclass
class Prepared:
    labels: list[str]  # class id → name, the order of both heads' logits
    teacher_tokenizer: PreTrainedTokenizerBase
    student_tokenizer: PreTrainedTokenizerBase
    separate_tokenizers: bool  # the student tokenises apart (`teacher_*` inputs in `train`)
    teacher_train: list[Features]  # teacher tokens: fine-tuning
    train: list[Features]  # student tokens (+ teacher tokens when apart): distillation
    teacher_eval: list[Features]
    student_eval: list[Features]
    teacher_collator: PairedCollator
    student_collator: PairedCollator
    eval_split: str  # "validation", or "train" when no validation file was given


def _same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a is b or (type(a) is type(b) and a.get_vocab() == b.get_vocab())


def prepare_data(config: JobConfig, teacher_info: ModelInfo) -> Prepared:
    """Read and encode the training (and validation) file for the teacher and the student.

    Label names follow the teacher's head when it has one (see `data.label_index`); texts are
    truncated to the data's `max_seq_length` and to what both models can take.
    """
    teacher_tokenizer = AutoTokenizer.from_pretrained(str(config.teacher_path))
    teacher_config = AutoConfig.from_pretrained(str(config.teacher_path))
    student_tokenizer, student_config = teacher_tokenizer, teacher_config
    if config.student.model_path is not None:
        student_config = AutoConfig.from_pretrained(str(config.student.model_path))
        # A student directory with no tokenizer of its own reads the teacher's tokens.
        with contextlib.suppress(OSError, ValueError):
            student_tokenizer = AutoTokenizer.from_pretrained(str(config.student.model_path))
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

    teacher_labels = teacher_info.labels if teacher_info.task == "sequence-classification" \
        else None
    values: list[Any] = [r[train_columns.label] for r in train_records]
    values += [r[eval_columns.label] for r in eval_records]
    index = label_index(values, teacher_labels)
    labels = output_label_names(index, teacher_labels)

    def teacher_side(records: list[Any], columns: Columns) -> list[Features]:
        return encode(records, columns, teacher_tokenizer, max_length=max_length, index=index)

    teacher_train = teacher_side(train_records, train_columns)
    teacher_eval = teacher_side(eval_records, eval_columns)
    if separate:
        train = encode(train_records, train_columns, student_tokenizer, max_length=max_length,
                       index=index, teacher_tokenizer=teacher_tokenizer)
        student_eval = encode(eval_records, eval_columns, student_tokenizer,
                              max_length=max_length, index=index)
    else:
        train, student_eval = teacher_train, teacher_eval
    return Prepared(
        labels=labels, teacher_tokenizer=teacher_tokenizer, student_tokenizer=student_tokenizer,
        separate_tokenizers=separate, teacher_train=teacher_train, train=train,
        teacher_eval=teacher_eval, student_eval=student_eval,
        teacher_collator=PairedCollator(teacher_tokenizer),
        student_collator=PairedCollator(student_tokenizer,
                                        teacher_tokenizer if separate else None),
        eval_split=eval_split,
    )
