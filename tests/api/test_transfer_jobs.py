"""Unlabelled transfer files and augmentation through the API: what a job accepts, what it
refuses at creation (a 4xx naming the field, nothing queued), and files in use kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import (
    assert_error,
    job_body,
    queued_messages,
    sentiment_files,
    upload_model_dir,
    upload_records,
)
from tests.factories.records import sentiment_records


@pytest.fixture
def setup(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> dict[str, Any]:
    train_id, val_id = sentiment_files(client, auth)
    texts = [{"text": r["text"]} for r in sentiment_records(40, seed=7)]
    transfer_id = upload_records(client, auth, texts, purpose="unlabeled", name="texts.jsonl")
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    return {"train": train_id, "transfer": transfer_id, "teacher": teacher,
            "body": job_body(teacher=teacher, training_file=train_id, validation_file=val_id,
                             transfer_file=transfer_id,
                             augmentation={"methods": ["mask", "ngram"], "multiplier": 2})}


def test_unlabeled_file_needs_only_text(client: Any, auth: dict[str, str],
                                        setup: dict[str, Any]) -> None:
    listed = client.get("/v1/files?purpose=unlabeled", headers=auth).json()["data"]

    assert [f["id"] for f in listed] == [setup["transfer"]]
    assert listed[0]["columns"] == ["text"] and listed[0]["num_records"] == 40


def test_job_with_transfer_file_and_augmentation(client: Any, auth: dict[str, str],
                                                 setup: dict[str, Any], redis_db: int) -> None:
    response = client.post("/v1/distillation/jobs", headers=auth, json=setup["body"])

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["transfer_file"] == setup["transfer"]
    assert job["augmentation"] == {"methods": ["mask", "ngram"], "multiplier": 2}
    assert queued_messages(redis_db) == 1
    # The transfer file is in use until the job finishes.
    in_use = client.delete(f"/v1/files/{setup['transfer']}", headers=auth)
    assert_error(in_use, 409, code="file_in_use")


@pytest.mark.parametrize(("change", "status", "param"), [
    ({"transfer_file": "file-missing"}, 400, "transfer_file"),
    ({"transfer_file": "<train>"}, 400, "transfer_file"),  # purpose train, not unlabeled
    ({"data": {"text_column": "sentence", "label_column": "label"}}, 400, None),
    ({"augmentation": {"methods": ["mask", "backtranslate"], "multiplier": 2}}, 400,
     "augmentation.methods"),
    ({"augmentation": {"methods": [], "multiplier": 2}}, 422, "augmentation.methods"),
    ({"augmentation": {"methods": ["mask"], "multiplier": 0}}, 422, "augmentation.multiplier"),
    ({"augmentation": {"methods": ["mask"], "multiplier": 1000}}, 422,
     "augmentation.multiplier"),
])
def test_bad_transfer_options_are_refused_with_nothing_queued(
    client: Any, auth: dict[str, str], setup: dict[str, Any], redis_db: int,
    change: dict[str, Any], status: int, param: str | None,
) -> None:
    body = {**setup["body"], **change}
    if body.get("transfer_file") == "<train>":
        body["transfer_file"] = setup["train"]

    response = client.post("/v1/distillation/jobs", headers=auth, json=body)

    error = assert_error(response, status, param=param)
    if param is None:  # the training file lacks the column first: the message names it
        assert "sentence" in error["message"]
    assert queued_messages(redis_db) == 0
    assert client.get("/v1/distillation/jobs", headers=auth).json()["data"] == []


def test_transfer_file_without_the_text_column(client: Any, auth: dict[str, str],
                                               setup: dict[str, Any], redis_db: int) -> None:
    other = upload_records(client, auth, [{"review": "a fine film"}], purpose="unlabeled",
                           name="reviews.jsonl")

    response = client.post("/v1/distillation/jobs", headers=auth,
                           json={**setup["body"], "transfer_file": other})

    error = assert_error(response, 400, code="missing_column", param="data.text_column")
    assert "transfer_file" in error["message"] and "review" in error["message"]
    assert queued_messages(redis_db) == 0


def test_unlabeled_file_cannot_train(client: Any, auth: dict[str, str],
                                     setup: dict[str, Any]) -> None:
    response = client.post("/v1/distillation/jobs", headers=auth,
                           json={**setup["body"], "training_file": setup["transfer"]})

    assert_error(response, 400, code="wrong_file_purpose", param="training_file")
