"""Label names and ids, encoding with separate validation columns, padding and batching."""

from __future__ import annotations

from pathlib import Path

import pytest

from distillation.config import DataSpec, JobConfig, StudentSpec
from distillation.data.labels import label_index, output_label_names, sorted_labels
from distillation.models.info import inspect_model
from distillation.tasks.classification_data import Columns, prepare_data, read_records
from distillation.training.loop import length_grouped_batches
from tests.factories.records import sentiment_records, write_jsonl


def test_labels_sort_numerically_or_alphabetically() -> None:
    assert sorted_labels([3, "10", 2.0, "3"]) == ["2", "3", "10"]
    assert sorted_labels(["b", "a", "10", "a"]) == ["10", "a", "b"]


def test_label_index_follows_the_teacher_head() -> None:
    assert label_index(["positive", "negative"], None) == {"negative": 0, "positive": 1}
    # Named head: its order wins, whatever the data's order.
    assert label_index(["negative", "positive"], ["positive", "negative"]) == {
        "positive": 0, "negative": 1}
    # Class numbers index a named head (SST-2's 0/1 on negative/positive) ...
    index = label_index([0, "1"], ["negative", "positive"])
    assert index == {"0": 0, "1": 1}
    assert output_label_names(index, ["negative", "positive"]) == ["negative", "positive"]
    # ... and a generic head takes the data's numbers as names.
    index = label_index(["1", "0"], ["LABEL_0", "LABEL_1"])
    assert output_label_names(index, ["LABEL_0", "LABEL_1"]) == ["0", "1"]


def test_unknown_labels_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="does not know: neutral; the teacher knows negative, "
                                         "positive"):
        label_index(["positive", "neutral"], ["negative", "positive"])
    with pytest.raises(ValueError, match=r"use class numbers 0\.\.1"):
        label_index(["good"], ["LABEL_0", "LABEL_1"])
    with pytest.raises(ValueError, match="does not know: 5"):
        label_index(["5"], ["negative", "positive"])


def test_missing_column_names_file_and_record(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 2 has no label"):
        read_records(path, Columns("text", None, "label"))


def test_length_grouped_batches_cover_every_example_once() -> None:
    lengths = [5, 50, 7, 48, 6, 49, 8, 47, 9, 46, 10, 45]
    batches = length_grouped_batches(lengths, 2, seed=1, bucket_batches=6)
    assert sorted(i for b in batches for i in b) == list(range(12))
    # Sorted within the bucket: each batch pairs a short with a short, a long with a long.
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 3 for b in batches)
    assert batches == length_grouped_batches(lengths, 2, seed=1, bucket_batches=6)
    assert batches != length_grouped_batches(lengths, 2, seed=2, bucket_batches=6)


def test_prepare_data_with_renamed_validation_columns(tiny_teacher_dir: Path,
                                                      tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_records(12))
    rows = [{"content": r["text"] + " extra words " * 5, "sentiment": r["label"]}
            for r in sentiment_records(6, seed=3)]
    validation = write_jsonl(tmp_path / "dev.jsonl", rows)
    config = JobConfig(
        task="sequence-classification", teacher_path=tiny_teacher_dir, student=StudentSpec(),
        train_file=train, validation_file=validation, output_dir=tmp_path / "o",
        work_dir=tmp_path / "w",
        data=DataSpec(validation_text_column="content", validation_label_column="sentiment",
                      max_seq_length=16),
    )

    data = prepare_data(config, inspect_model(tiny_teacher_dir))

    assert data.labels == ["negative", "positive"] and data.eval_split == "validation"
    assert not data.separate_tokenizers and data.student.train is data.teacher.train
    assert [f["labels"] for f in data.student.evaluation] == [1, 0, 1, 0, 1, 0]
    assert max(len(f["input_ids"]) for f in data.student.evaluation) == 16  # truncated
    batch = data.student.collator([data.student.train[0], data.student.train[1]])
    # Padded to the longer of the two, not to max_seq_length.
    assert batch["input_ids"].shape[1] == max(len(data.student.train[i]["input_ids"])
                                              for i in (0, 1))
    assert batch["labels"].tolist() == [1, 0]
