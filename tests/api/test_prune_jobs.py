"""`student.prune_vocabulary` at job creation: accepted for a classifier whose student reads the
teacher's WordPiece vocabulary, and refused (400 naming the field, nothing queued) for another
task, another kind of tokenizer, or a student.model with another vocabulary."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from app.jobs.core_config import to_job_config
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from tests.factories.api import (
    assert_error,
    job_body,
    queued_messages,
    sentiment_files,
    upload_model_dir,
    upload_records,
)
from tests.factories.lm import copy_records, permute_vocab, save_gpt2

JOBS = "/v1/distillation/jobs"
PARAM = "student.prune_vocabulary"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path) -> dict[str, Path]:
    """A GPT-2 language model, the tiny classifier with a BPE tokenizer, and the tiny classifier
    with two token ids swapped (another vocabulary)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("prune_models")
    bpe = root / "bert_bpe"
    shutil.copytree(tiny_teacher_dir, bpe)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (bpe / name).unlink(missing_ok=True)
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(BPE(vocab={"<unk>": 0, "a": 1, "b": 2, "ab": 3},
                                       merges=[("a", "b")], unk_token="<unk>")),
        unk_token="<unk>", pad_token="<unk>").save_pretrained(bpe)
    other_ids = root / "bert_other_ids"
    shutil.copytree(tiny_teacher_dir, other_ids)
    return {"gpt2": save_gpt2(root / "gpt2"), "bert_bpe": bpe,
            "bert_other_ids": permute_vocab(other_ids)}


def _pruned(body: dict[str, Any]) -> dict[str, Any]:
    body["student"] = {**body["student"], "prune_vocabulary": True}
    return body


def test_a_classifier_job_with_the_teachers_vocabulary_is_accepted(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
) -> None:
    train, validation = sentiment_files(client, auth)
    teacher = str(upload_model_dir(client, auth, tiny_teacher_dir)["id"])
    built = _pruned(job_body(teacher=teacher, training_file=train, validation_file=validation))
    # a student.model with the teacher's own tokenizer may be pruned too
    given = _pruned(job_body(teacher=teacher, training_file=train, student={"model": teacher}))

    jobs = [client.post(JOBS, headers=auth, json=body) for body in (built, given)]

    for response in jobs:
        assert response.status_code == 201, response.text
        assert response.json()["student"]["prune_vocabulary"] is True
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(JobRow, jobs[0].json()["id"])
        assert row is not None
        assert to_job_config(row, session=session, settings=settings).student.prune_vocabulary
    unpruned = client.post(JOBS, headers=auth, json=job_body(teacher=teacher, training_file=train))
    # Unset: the engine decides (only a student sized to a target prunes).
    assert unpruned.json()["student"]["prune_vocabulary"] is None


@pytest.mark.parametrize(("teacher", "student", "message"), [
    ("gpt2", None, "not available for causal-lm: a language model's vocabulary is its output"),
    ("bert_bpe", None, "supports WordPiece tokenizers (BERT's) only; the teacher's tokenizer is "
                       "BPE"),
    ("tiny", "bert_other_ids", "needs a student that reads the teacher's vocabulary"),
])
def test_what_cannot_be_pruned_is_refused_at_creation(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], tiny_teacher_dir: Path,
    redis_db: int, teacher: str, student: str | None, message: str,
) -> None:
    teacher_id = str(upload_model_dir(
        client, auth, tiny_teacher_dir if teacher == "tiny" else model_dirs[teacher])["id"])
    if teacher == "gpt2":
        body = job_body(teacher=teacher_id, task="causal-lm",
                        training_file=upload_records(client, auth, copy_records(4)),
                        student={"architecture": {"num_layers": 1}, "init": "teacher"})
    else:
        body = job_body(teacher=teacher_id, training_file=sentiment_files(client, auth)[0])
    if student is not None:
        body["student"] = {"model": str(upload_model_dir(client, auth, model_dirs[student])["id"])}

    response = client.post(JOBS, headers=auth, json=_pruned(body))

    error = assert_error(response, 400, code="vocabulary_not_prunable", param=PARAM)
    assert message in error["message"]
    assert client.get(JOBS, headers=auth).json()["data"] == []
    assert queued_messages(redis_db) == 0
