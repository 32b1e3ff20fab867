"""Chat records through the API: a bad chat record is a 400 naming its line and field, at upload
or at job creation, with nothing stored or queued; a chat file needs a teacher with a chat
template; prompts with no answer cannot be learnt token by token; a chat job on a tiny Llama
chat teacher runs end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.factories.api import assert_error, job_body, queued_messages, upload_model_dir, upload_records
from tests.factories.lm import chat_records, copy_records, save_chat_llama, save_gpt2

JOBS = "/v1/distillation/jobs"
USER = {"role": "user", "content": "copy red cat"}
ANSWER = {"role": "assistant", "content": "red cat"}
GOOD = json.dumps({"messages": [USER, ANSWER]})


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat_models")
    return {"chat": save_chat_llama(root / "chat"), "plain": save_gpt2(root / "plain")}


def _teacher(client: Any, auth: dict[str, str], model_dirs: dict[str, Path], name: str) -> str:
    return str(upload_model_dir(client, auth, model_dirs[name])["id"])


def _body(teacher: str, train: str, validation: str | None = None, **overrides: Any
          ) -> dict[str, Any]:
    values: dict[str, Any] = {
        "task": "causal-lm", "student": {"architecture": {"num_layers": 1}, "init": "teacher"},
        "data": {"max_seq_length": 48}, **overrides}
    return job_body(teacher=teacher, training_file=train, validation_file=validation, **values)


def _upload_lines(client: Any, auth: dict[str, str], lines: list[str]) -> Any:
    body = ("\n".join(lines) + "\n").encode()
    return client.post("/v1/files", headers=auth, data={"purpose": "train"},
                       files={"file": ("chat.jsonl", body, "application/jsonl")})


def _assert_nothing_created(client: Any, auth: dict[str, str], redis_db: int) -> None:
    assert client.get(JOBS, headers=auth).json()["data"] == []
    assert queued_messages(redis_db) == 0


def _turns(*turns: dict[str, Any]) -> str:
    return json.dumps({"messages": list(turns)})


@pytest.mark.parametrize(("bad", "field"), [
    (_turns(USER, {"role": "tool", "content": "x"}), "messages[1].role"),
    (_turns({"role": "system", "content": "be brief"}), "no user turn"),
    (_turns(USER, {"role": "assistant", "content": ""}), "messages[1].content is empty"),
    (_turns(USER, {"role": "assistant", "content": 5}), "messages[1].content must be a string"),
    (_turns(USER, {"role": "assistant", "content": None}), "messages[1].content must be a string"),
    (json.dumps({"messages": "copy red cat"}), "a file holds chat records only or none"),
    (json.dumps({"text": "copy red cat"}), "a file holds chat records only or none"),
    (json.dumps({"messages": [USER, ["red cat"]]}), "item 1 must be a string"),
])
def test_a_bad_chat_record_is_refused_at_upload_naming_its_line(
    client: Any, auth: dict[str, str], settings: Any, bad: str, field: str,
) -> None:
    from app.files.tables import FileRow
    from app.kit.db import session_scope

    # Given a chat file whose third line (after a blank one) is bad
    response = _upload_lines(client, auth, [GOOD, "", bad, GOOD])

    error = assert_error(response, 400, code="invalid_file", param="file")
    assert "line 3: " in error["message"] and field in error["message"], error["message"]
    with session_scope(settings.sqlalchemy_url) as session:
        assert session.scalar(select(func.count()).select_from(FileRow)) == 0


def test_a_good_chat_file_is_stored_with_its_messages_column(
    client: Any, auth: dict[str, str],
) -> None:
    response = _upload_lines(client, auth, [GOOD, _turns({"role": "system", "content": "hi"},
                                                         USER)])

    assert response.status_code == 201, response.text
    assert response.json()["columns"] == ["messages"] and response.json()["num_records"] == 2


def test_messages_that_are_no_list_are_refused_at_job_creation(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], redis_db: int,
) -> None:
    # A `messages` column of strings is no chat file at upload, but a causal-lm job reads it as one
    teacher = _teacher(client, auth, model_dirs, "chat")
    train = upload_records(client, auth, [{"messages": "copy red"}, {"messages": "copy sun"}])

    response = client.post(JOBS, headers=auth, json=_body(teacher, train))

    error = assert_error(response, 400, code="invalid_records", param="training_file")
    assert "training_file line 1: messages must be a list" in error["message"]
    _assert_nothing_created(client, auth, redis_db)


def test_a_chat_file_needs_a_teacher_with_a_chat_template(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], redis_db: int,
) -> None:
    teacher = _teacher(client, auth, model_dirs, "plain")
    train = upload_records(client, auth, chat_records(4))

    response = client.post(JOBS, headers=auth, json=_body(teacher, train))

    error = assert_error(response, 400, code="no_chat_template", param="teacher.model")
    assert "no chat template" in error["message"] and train in error["message"]
    _assert_nothing_created(client, auth, redis_db)


@pytest.mark.parametrize("rows", [
    chat_records(3) + chat_records(2, seed=1, answered=False),
    [*copy_records(2), {"prompt": "copy sun", "completion": ""}],
    [{"prompt": "copy sun"}],
])
def test_prompts_with_no_answer_are_accepted_for_the_teacher_to_answer(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], rows: list[dict[str, Any]],
) -> None:
    teacher = _teacher(client, auth, model_dirs, "chat")
    train = upload_records(client, auth, rows)

    response = client.post(JOBS, headers=auth, json=_body(teacher, train))

    assert response.status_code == 201, response.text


def test_a_chat_job_runs_end_to_end(
    client: Any, auth: dict[str, str], settings: Any, model_dirs: dict[str, Path],
) -> None:
    from worker.runner import execute_job

    teacher = _teacher(client, auth, model_dirs, "chat")
    train = upload_records(client, auth, chat_records(24, seed=1))
    validation = upload_records(client, auth, chat_records(8, seed=2), purpose="validation",
                                name="dev.jsonl")
    body = _body(teacher, train, validation,
                 hyperparameters={"epochs": 2, "batch_size": 8, "learning_rate": 5e-3})

    created = client.post(JOBS, headers=auth, json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert execute_job(job_id, settings=settings) == "succeeded", client.get(
        f"{JOBS}/{job_id}/events", headers=auth).text

    job = client.get(f"{JOBS}/{job_id}", headers=auth).json()
    assert job["metrics"]["eval"]["perplexity"] > 1.0
    # The student answers a conversation through predict, with its teacher's chat template
    predicted = client.post(f"/v1/models/{job['result_model']}/predict", headers=auth,
                            json={"messages": [USER], "max_new_tokens": 4})
    assert predicted.status_code == 200, predicted.text
    assert isinstance(predicted.json()["data"][0]["text"], str)
