"""A model's tokenizer vocabulary read at job creation: a malformed or oversized one is a 400
naming the model (it was a 500: `"vocab": [[], ...]` raised an IndexError)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import assert_error, job_body, sentiment_files, upload_model_dir


def _with_tokenizer_json(src: Path, dst: Path, tokenizer: dict[str, Any]) -> Path:
    shutil.copytree(src, dst)
    (dst / "tokenizer.json").write_text(json.dumps(tokenizer))
    return dst


@pytest.mark.parametrize(("vocab", "needle"), [
    ([[], ["a", 0.0]], "model.vocab[0] is not a [piece, score] pair"),
    ({"a": "zero"}, "tokenizer.json: model.vocab['a'] is 'zero', not a token id"),
])
def test_a_malformed_vocabulary_is_a_400_naming_the_model(
    client: Any, auth: dict[str, str], tiny_teacher_dir: Path, tmp_path: Path,
    vocab: Any, needle: str,
) -> None:
    # Given a student model whose tokenizer.json holds a malformed vocabulary.
    student_dir = _with_tokenizer_json(tiny_teacher_dir, tmp_path / "student",
                                       {"model": {"type": "Unigram", "vocab": vocab}})
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    student = upload_model_dir(client, auth, student_dir)["id"]
    train, val = sentiment_files(client, auth)

    # When a job pairs it with the teacher.
    response = client.post("/v1/distillation/jobs", headers=auth, json=job_body(
        teacher=teacher, training_file=train, validation_file=val, student={"model": student}))

    # Then: a 400 naming the student and what is wrong with its vocabulary.
    error = assert_error(response, 400, code="invalid_tokenizer", param="student.model")
    assert needle in error["message"]


def test_a_vocabulary_past_the_entry_limit_is_a_400(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
) -> None:
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    train, val = sentiment_files(client, auth)
    settings.max_vocab_entries = 1000  # the teacher's WordPiece vocabulary holds 30,522

    response = client.post("/v1/distillation/jobs", headers=auth, json=job_body(
        teacher=teacher, training_file=train, validation_file=val, student={"model": teacher}))

    error = assert_error(response, 400, code="invalid_tokenizer", param="teacher.model")
    assert "holds more than 1000 tokens" in error["message"]
