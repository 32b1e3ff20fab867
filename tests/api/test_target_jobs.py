"""A student sized to a target through the API: accepted when a candidate can meet it, refused
at creation naming the field and the closest candidate when none can, nothing queued; a chat
model's job sized to a target runs end to end and its download generates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from distillation.config import (
    CLASSIFIER_STUDENT_EPOCHS,
    CLASSIFIER_STUDENT_LEARNING_RATE,
    Hyperparameters,
)
from tests.factories.api import (
    assert_error,
    download_model,
    job_body,
    queued_messages,
    sentiment_files,
    upload_model_dir,
    upload_records,
)
from tests.factories.lm import chat_records, save_chat_llama

JOBS = "/v1/distillation/jobs"


@pytest.fixture
def body(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> dict[str, Any]:
    train_id, val_id = sentiment_files(client, auth)
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    return job_body(teacher=teacher, training_file=train_id, validation_file=val_id,
                    student={"target": {"compression": 4}})


def test_target_job_is_accepted(client: Any, auth: dict[str, str], body: dict[str, Any],
                                redis_db: int) -> None:
    response = client.post("/v1/distillation/jobs", headers=auth, json=body)

    assert response.status_code == 201, response.text
    student = response.json()["student"]
    assert student["target"] == {"compression": 4.0, "max_latency_ms": None}
    assert student["architecture"] is None and student["prune_vocabulary"] is None
    assert queued_messages(redis_db) == 1


@pytest.mark.parametrize(("student", "hyperparameters", "expected"), [
    # A student the service builds gets the classifier-student recipe where nothing is named
    ({"target": {"compression": 4}}, {},
     {"learning_rate": CLASSIFIER_STUDENT_LEARNING_RATE, "epochs": CLASSIFIER_STUDENT_EPOCHS}),
    ({"architecture": {"num_layers": 1}}, {"epochs": 2},
     {"learning_rate": CLASSIFIER_STUDENT_LEARNING_RATE, "epochs": 2}),
    ({"target": {"compression": 4}}, {"learning_rate": 3e-5},
     {"learning_rate": 3e-5, "epochs": CLASSIFIER_STUDENT_EPOCHS}),
    # a student of its own (a checkpoint) keeps the general defaults
    ("teacher", {}, {"learning_rate": Hyperparameters().learning_rate,
                     "epochs": Hyperparameters().epochs}),
])
def test_a_built_classifier_student_gets_its_recipe_unless_the_request_names_it(
    client: Any, auth: dict[str, str], body: dict[str, Any], student: Any,
    hyperparameters: dict[str, Any], expected: dict[str, Any],
) -> None:
    student = {"model": body["teacher"]["model"]} if student == "teacher" else student
    response = client.post(JOBS, headers=auth, json={**body, "student": student,
                                                     "hyperparameters": hyperparameters})

    assert response.status_code == 201, response.text
    shown = response.json()["hyperparameters"]
    assert {k: shown[k] for k in expected} == expected


@pytest.mark.parametrize(("student", "status", "param", "words"), [
    # The tiny teacher's 30,522-row embeddings are most of it: without pruning, 4x is out of
    # reach, and the message says what the smallest candidate reaches and what would help.
    ({"target": {"compression": 4}, "prune_vocabulary": False}, 400,
     "student.target.compression", ["smallest candidate", "prune_vocabulary"]),
    ({"target": {"compression": 900}}, 400, "student.target.compression",
     ["smallest candidate"]),
    ({"target": {"max_latency_ms": 0.000001}}, 400, "student.target.max_latency_ms",
     ["fastest candidate"]),
    ({"target": {}}, 422, "student.target", []),
    ({"target": {"compression": 0.5}}, 422, "student.target.compression", []),
    ({"target": {"compression": 4}, "architecture": {"num_layers": 1}}, 422, "student", []),
])
def test_unreachable_or_malformed_targets_are_refused(
    client: Any, auth: dict[str, str], body: dict[str, Any], redis_db: int,
    student: dict[str, Any], status: int, param: str, words: list[str],
) -> None:
    response = client.post("/v1/distillation/jobs", headers=auth, json={**body, "student": student})

    error = assert_error(response, status, param=param)
    for word in words:
        assert word in error["message"]
    assert queued_messages(redis_db) == 0


def test_layer_map_needs_a_known_depth(client: Any, auth: dict[str, str],
                                       body: dict[str, Any]) -> None:
    losses = [{"type": "kl"}, {"type": "hidden_mse", "layer_map": {"0": 1}}]
    response = client.post("/v1/distillation/jobs", headers=auth,
                           json={**body, "distillation": {"losses": losses}})

    assert "student.architecture" in assert_error(response, 400, param="student.target")["message"]


@pytest.fixture
def chat_body(client: Any, auth: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    teacher = upload_model_dir(client, auth, save_chat_llama(tmp_path / "chat_llama"))["id"]
    train = upload_records(client, auth, chat_records(24, seed=1))
    validation = upload_records(client, auth, chat_records(8, seed=2), purpose="validation",
                                name="dev.jsonl")
    return job_body(teacher=teacher, training_file=train, validation_file=validation,
                    task="causal-lm", student={"target": {"compression": 2}},
                    data={"max_seq_length": 48},
                    hyperparameters={"epochs": 1, "batch_size": 8, "learning_rate": 5e-3})


def test_chat_job_sized_to_a_target_runs_and_its_download_generates(
    client: Any, auth: dict[str, str], settings: Any, chat_body: dict[str, Any], tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.runner import execute_job

    created = client.post(JOBS, headers=auth, json=chat_body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert execute_job(job_id, settings=settings) == "succeeded", client.get(
        f"{JOBS}/{job_id}/events", headers=auth).text

    job = client.get(f"{JOBS}/{job_id}", headers=auth).json()
    model = client.get(f"/v1/models/{job['result_model']}", headers=auth).json()
    report = model["report"]
    assert report["compression"] >= 2 and report["student_selection"]["target"] == {
        "compression": 2.0}
    messages = [{"role": "user", "content": "copy red cat"}]
    served = client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                         json={"messages": messages, "max_new_tokens": 4})
    assert served.status_code == 200, served.text

    # The download loads as a user loads it: half the teacher's parameters at most, its
    # key-value heads dividing its heads, and it answers what predict served (greedy)
    folder = download_model(client, auth, model["id"], tmp_path / "student")
    student = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    config = student.config
    assert sum(p.numel() for p in student.parameters()) == report["student"]["parameters"]
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert config.head_dim * config.num_attention_heads == config.hidden_size
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    ids = student.generate(**inputs, max_new_tokens=4, do_sample=False)
    answer = tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip() == served.json()["data"][0]["text"].strip()


@pytest.mark.parametrize(("target", "param", "words"), [
    # Not a hint to prune: a language model's vocabulary cannot be pruned
    ({"compression": 50}, "student.target.compression", ["smallest candidate, 1 layers × 8"]),
    ({"max_latency_ms": 0.000001}, "student.target.max_latency_ms", ["fastest candidate"]),
])
def test_unreachable_targets_of_a_language_model_are_refused(
    client: Any, auth: dict[str, str], chat_body: dict[str, Any], redis_db: int,
    target: dict[str, float], param: str, words: list[str],
) -> None:
    body = {**chat_body, "student": {"target": target}}

    response = client.post(JOBS, headers=auth, json=body)

    message = assert_error(response, 400, param=param)["message"]
    assert all(word in message for word in words) and "prune_vocabulary" not in message
    assert queued_messages(redis_db) == 0
