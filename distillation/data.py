"""Records → label ids and token ids, and the batches the loops iterate over.

Label names: the teacher's head decides when it has named labels (its order is the logits'
order); otherwise they are the data's labels, sorted numerically when all are whole numbers and
alphabetically otherwise. Batches are padded per batch (`DataCollatorWithPadding`) and grouped by
length, so a batch of short sentences is not padded to the longest sentence of the epoch.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from distillation.config import DataSpec
from distillation.records import Record, read_file

Features = dict[str, Any]
TEACHER_PREFIX = "teacher_"
_GENERIC_LABEL = re.compile(r"^LABEL_(\d+)$")


def label_text(value: Any) -> str:
    """A label value as text: 1, 1.0 and "1" are all "1"."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def sorted_labels(values: Iterable[Any]) -> list[str]:
    """Distinct labels, numerically sorted when all are whole numbers, else alphabetically."""
    names = {label_text(v) for v in values}
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def label_index(data_labels: Iterable[Any], teacher_labels: Sequence[str] | None) -> dict[str, int]:
    """{label text: class id}, following the teacher's head when it has one.

    Whole-number labels index a head whose labels are names (SST-2's 0/1 on negative/positive)
    or generic (LABEL_0, LABEL_1); other labels must be among the head's names.
    """
    names = sorted_labels(data_labels)
    if not teacher_labels:
        return {name: i for i, name in enumerate(names)}
    known = {name: i for i, name in enumerate(teacher_labels)}
    if all(n in known for n in names):
        return {n: known[n] for n in names}
    numeric = all(re.fullmatch(r"\d+", n) for n in names)
    if numeric and all(int(n) < len(teacher_labels) for n in names):
        return {n: int(n) for n in names}
    unknown = [n for n in names if n not in known]
    generic = all(_GENERIC_LABEL.match(t) for t in teacher_labels)
    hint = (f"use class numbers 0..{len(teacher_labels) - 1}" if generic
            else f"the teacher knows {', '.join(teacher_labels)}")
    raise ValueError(
        f"the data has labels the teacher's classification head does not know: "
        f"{', '.join(unknown[:10])}; {hint}"
    )


def output_label_names(index: dict[str, int], teacher_labels: Sequence[str] | None) -> list[str]:
    """The names the student's head gets (a generic teacher head takes the data's numbers)."""
    if not teacher_labels:
        return [name for name, _ in sorted(index.items(), key=lambda kv: kv[1])]
    if all(_GENERIC_LABEL.match(t) for t in teacher_labels):
        by_id = {i: name for name, i in index.items()}
        return [by_id.get(i, t) for i, t in enumerate(teacher_labels)]
    return list(teacher_labels)


@dataclass
class Columns:
    text: str
    pair: str | None
    label: str

    @classmethod
    def for_train(cls, spec: DataSpec) -> Columns:
        return cls(spec.text_column, spec.text_pair_column, spec.label_column)

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
    """Token ids and label ids per record; `teacher_*` ids too when the teacher tokenises apart."""
    texts = [str(r[columns.text]) for r in records]
    pairs = [str(r[columns.pair]) for r in records] if columns.pair else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    features = [{k: encoded[k][i] for k in encoded} for i in range(len(records))]
    if teacher_tokenizer is not None:
        teacher = teacher_tokenizer(texts, pairs, truncation=True, max_length=max_length)
        for i, row in enumerate(features):
            row.update({TEACHER_PREFIX + k: teacher[k][i] for k in teacher})
    for row, record in zip(features, records, strict=True):
        row["labels"] = index[label_text(record[columns.label])]
    return features


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


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, bucket_batches: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within buckets, shuffle the batches."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    bucket = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start : start + bucket], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def sequential_batches(count: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, count))) for i in range(0, count, batch_size)]
