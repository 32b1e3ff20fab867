"""Jobs through the API on real Postgres and Redis: create, idempotency, paging, cancel, events,
tenant isolation, and every bad input rejected with nothing left behind."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import job_body, queued_messages, sentiment_files, upload_model_dir


@pytest.fixture
def setup(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> dict[str, Any]:
    train_id, val_id = sentiment_files(client, auth)
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    return {"train": train_id, "validation": val_id, "teacher": teacher,
            "body": job_body(teacher=teacher, training_file=train_id, validation_file=val_id)}


def test_select_and_finetune_defaults_are_shown_and_explicit_values_kept(
    client: Any, auth: dict[str, str], setup: dict[str, Any]
) -> None:
    # Given a job with the defaults, and one fine-tuning the built-in base teacher on its terms
    default = client.post("/v1/distillation/jobs", headers=auth, json=setup["body"]).json()
    body = _set(setup["body"], "hyperparameters.select", "last")
    body["teacher"] = {"model": "all-minilm-l6-v2",
                       "finetune": {"epochs": 2, "learning_rate": 3e-5, "min_steps": 0}}
    explicit = client.post("/v1/distillation/jobs", headers=auth, json=body)
    body["teacher"]["finetune"] = {"epochs": 1}
    floor = client.post("/v1/distillation/jobs", headers=auth, json=body)

    # Then the job objects show what will run: the best epoch unless asked otherwise, the
    # fine-tuning defaults where nothing was said, and no fine-tuned teacher yet
    assert default["hyperparameters"]["select"] == "best" and default["teacher_model"] is None
    assert explicit.status_code == floor.status_code == 201, (explicit.text, floor.text)
    assert explicit.json()["hyperparameters"]["select"] == "last"
    assert explicit.json()["teacher"]["finetune"] == {"epochs": 2, "learning_rate": 3e-5,
                                                      "batch_size": None, "min_steps": 0}
    assert floor.json()["teacher"]["finetune"] == {"epochs": 1, "learning_rate": 5e-5,
                                                   "batch_size": None, "min_steps": 200}
    assert explicit.json()["teacher_model"] is None


def test_create_job_commits_then_wakes_a_worker(client: Any, auth: dict[str, str],
                                                setup: dict[str, Any], redis_db: int) -> None:
    response = client.post("/v1/distillation/jobs", headers=auth, json=setup["body"])

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["id"].startswith("job-") and job["object"] == "distillation.job"
    assert job["status"] == "queued" and job["result_model"] is None and job["error"] is None
    assert job["progress"]["percent"] == 0.0 and job["validation_file"] == setup["validation"]
    assert queued_messages(redis_db) == 1  # one message with the job id, on the training queue
    assert client.get(f"/v1/distillation/jobs/{job['id']}", headers=auth).json() == job
    events = client.get(f"/v1/distillation/jobs/{job['id']}/events", headers=auth).json()
    assert events["object"] == "list" and events["data"][0]["object"] == "distillation.job.event"


def test_idempotency_key_replays_and_rejects_a_different_body(
    client: Any, auth: dict[str, str], setup: dict[str, Any], redis_db: int
) -> None:
    headers = {**auth, "Idempotency-Key": "abc-123"}
    first = client.post("/v1/distillation/jobs", headers=headers, json=setup["body"])
    again = client.post("/v1/distillation/jobs", headers=headers, json=setup["body"])
    other = copy.deepcopy(setup["body"])
    other["hyperparameters"]["epochs"] = 2
    conflict = client.post("/v1/distillation/jobs", headers=headers, json=other)

    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/v1/distillation/jobs", headers=auth).json()["data"]) == 1
    assert queued_messages(redis_db) == 1


def test_list_is_newest_first_with_cursor_paging_and_status_filter(
    client: Any, auth: dict[str, str], setup: dict[str, Any]
) -> None:
    ids = [client.post("/v1/distillation/jobs", headers=auth, json=setup["body"]).json()["id"]
           for _ in range(3)]
    client.post(f"/v1/distillation/jobs/{ids[0]}/cancel", headers=auth)

    first = client.get("/v1/distillation/jobs?limit=2", headers=auth).json()
    second = client.get(f"/v1/distillation/jobs?limit=2&after={first['data'][-1]['id']}",
                        headers=auth).json()
    cancelled = client.get("/v1/distillation/jobs?status=cancelled", headers=auth).json()

    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert [j["id"] for j in second["data"]] == [ids[0]] and second["has_more"] is False
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    bad = client.get("/v1/distillation/jobs?status=done", headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    unknown = client.get("/v1/distillation/jobs?after=job-nope", headers=auth)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "after"


def test_cancel_queued_job_then_409(client: Any, auth: dict[str, str],
                                    setup: dict[str, Any]) -> None:
    job_id = client.post("/v1/distillation/jobs", headers=auth, json=setup["body"]).json()["id"]

    cancelled = client.post(f"/v1/distillation/jobs/{job_id}/cancel", headers=auth)
    again = client.post(f"/v1/distillation/jobs/{job_id}/cancel", headers=auth)

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def test_events_page_with_after(client: Any, auth: dict[str, str], setup: dict[str, Any]) -> None:
    job_id = client.post("/v1/distillation/jobs", headers=auth, json=setup["body"]).json()["id"]
    client.post(f"/v1/distillation/jobs/{job_id}/cancel", headers=auth)

    all_events = client.get(f"/v1/distillation/jobs/{job_id}/events", headers=auth).json()["data"]
    newer = client.get(f"/v1/distillation/jobs/{job_id}/events?after={all_events[0]['id']}",
                       headers=auth).json()["data"]

    assert len(all_events) == 2 and newer == all_events[1:]
    assert {"id", "created_at", "level", "type", "message", "data"} <= set(all_events[0])
    for bad in ("event-²", "event-١٢", "event-99999999999999999999999", "event-", "nope"):
        response = client.get(f"/v1/distillation/jobs/{job_id}/events", params={"after": bad},
                              headers=auth)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["param"] == "after"


def test_another_tenants_job_is_404(client: Any, auth: dict[str, str],
                                    other_auth: dict[str, str], setup: dict[str, Any]) -> None:
    job_id = client.post("/v1/distillation/jobs", headers=auth, json=setup["body"]).json()["id"]

    for method, path in [("get", f"/v1/distillation/jobs/{job_id}"),
                         ("post", f"/v1/distillation/jobs/{job_id}/cancel"),
                         ("get", f"/v1/distillation/jobs/{job_id}/events")]:
        response = getattr(client, method)(path, headers=other_auth)
        missing = getattr(client, method)(path.replace(job_id, "job-nope"), headers=other_auth)
        assert response.status_code == missing.status_code == 404
        assert response.text.replace(job_id, "job-nope") == missing.text
    assert client.get("/v1/distillation/jobs", headers=other_auth).json()["data"] == []
    # and the other tenant cannot use this tenant's files or models in a job of its own
    stolen = client.post("/v1/distillation/jobs", headers=other_auth, json=setup["body"])
    assert stolen.status_code == 400 and stolen.json()["error"]["param"] == "training_file"


def test_missing_or_unknown_key_is_401(client: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        response = client.get("/v1/distillation/jobs", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, leaf = path.split(".")
    node = body
    for key in parents:
        node = node[key]
    node[leaf] = value
    return body


BAD_INPUTS = [
    # (what, path, value or callable(setup), status, param)
    ("unknown task", "task", "image-generation", 400, "task"),
    ("missing file", "training_file", "file-doesnotexist", 400, "training_file"),
    ("wrong purpose", "training_file", lambda s: s["validation"], 400, "training_file"),
    ("validation file of purpose train", "validation_file", lambda s: s["train"], 400,
     "validation_file"),
    ("unknown model ref", "teacher.model", "model-doesnotexist", 400, "teacher.model"),
    ("base teacher without finetune", "teacher.model", "all-minilm-l6-v2", 400,
     "teacher.finetune"),
    ("hidden size not divisible by heads", "student.architecture",
     {"num_layers": 1, "hidden_size": 30, "num_heads": 4}, 400,
     "student.architecture.hidden_size"),
    ("learning rate out of range", "hyperparameters.learning_rate", 5.0, 422,
     "hyperparameters.learning_rate"),
    ("zero epochs", "hyperparameters.epochs", 0, 422, "hyperparameters.epochs"),
    ("label column missing", "data.label_column", "sentiment", 400, "data.label_column"),
    ("unknown loss", "distillation.losses", [{"type": "wasserstein"}], 400,
     "distillation.losses[0].type"),
    ("non-positive temperature", "distillation.temperature", 0, 422, "distillation.temperature"),
    ("layer map out of range", "distillation.losses",
     [{"type": "hidden_mse", "layer_map": {"0": 9}}], 400, "distillation.losses[0].layer_map"),
    ("unknown field", "hyperparameters.epohcs", 3, 422, "hyperparameters.epohcs"),
    ("unknown epoch selection", "hyperparameters.select", "worst", 422, "hyperparameters.select"),
    ("negative fine-tuning step floor", "teacher.finetune", {"epochs": 1, "min_steps": -1}, 422,
     "teacher.finetune.min_steps"),
]


@pytest.mark.parametrize(("what", "path", "value", "status", "param"), BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_job_input_is_rejected_and_nothing_is_created(
    client: Any, auth: dict[str, str], setup: dict[str, Any], redis_db: int,
    what: str, path: str, value: Any, status: int, param: str,
) -> None:
    body = _set(setup["body"], path, value(setup) if callable(value) else value)

    response = client.post("/v1/distillation/jobs", headers=auth, json=body)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["code"]
    assert client.get("/v1/distillation/jobs", headers=auth).json()["data"] == []
    assert queued_messages(redis_db) == 0


BAD_RECORDS = [
    # (what, training rows, validation rows or None, param)
    ("a record without a label", [{"text": "good"}, {"text": "bad film", "label": "negative"}],
     None, "training_file"),
    ("a null label", [{"text": "good", "label": "positive"}, {"text": "bad", "label": None}], None,
     "training_file"),
    ("a list label", [{"text": "good", "label": "positive"}, {"text": "bad", "label": [1]}], None,
     "training_file"),
    ("an empty text", [{"text": "", "label": "positive"}, {"text": "bad", "label": "negative"}],
     None, "training_file"),
    ("a single class", [{"text": "good", "label": "positive"}, {"text": "fine", "label": "positive"}],
     None, "training_file"),
    ("labels the teacher's head does not know",
     [{"text": "good", "label": "positive"}, {"text": "meh", "label": "neutral"}], None,
     "data.label_column"),
    ("a validation record without text",
     [{"text": "good", "label": "positive"}, {"text": "bad", "label": "negative"}],
     [{"text": "fine", "label": "positive"}, {"label": "negative"}], "validation_file"),
    # Read as a stream, the labels are the one thing kept per file: capped, as ids are no classes.
    ("more distinct labels than any classifier",
     [{"text": "good", "label": f"id-{n}"} for n in range(10_001)], None, "training_file"),
]


@pytest.mark.parametrize(("what", "train_rows", "val_rows", "param"), BAD_RECORDS,
                         ids=[b[0] for b in BAD_RECORDS])
def test_records_of_the_wrong_shape_are_rejected_at_creation(
    client: Any, auth: dict[str, str], setup: dict[str, Any], redis_db: int,
    what: str, train_rows: list[dict[str, Any]], val_rows: list[dict[str, Any]] | None, param: str,
) -> None:
    from tests.factories.api import upload_records

    body = copy.deepcopy(setup["body"])
    body["training_file"] = upload_records(client, auth, train_rows)
    body["validation_file"] = (upload_records(client, auth, val_rows, purpose="validation")
                               if val_rows else None)

    response = client.post("/v1/distillation/jobs", headers=auth, json=body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert client.get("/v1/distillation/jobs", headers=auth).json()["data"] == []
    assert queued_messages(redis_db) == 0


def test_malformed_json_and_list_fields_are_reported_plainly(
    client: Any, auth: dict[str, str], setup: dict[str, Any]
) -> None:
    broken = client.post("/v1/distillation/jobs", headers={**auth, "Content-Type": "application/json"},
                         content=b'{"task": ')
    body = _set(setup["body"], "distillation.losses", [{"type": "kl", "weight": -1}])
    negative = client.post("/v1/distillation/jobs", headers=auth, json=body)

    assert broken.status_code == 422 and broken.json()["error"]["code"] == "invalid_json"
    assert broken.json()["error"]["param"] is None
    assert negative.status_code == 422
    assert negative.json()["error"]["param"] == "distillation.losses[0].weight"


def test_openapi_declares_bearer_auth_and_the_error_shape(client: Any) -> None:
    spec = client.get("/openapi.json").json()

    create = spec["paths"]["/v1/distillation/jobs"]["post"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert create["security"] == [{"HTTPBearer": []}]
    assert create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse")


def test_files_and_models_of_an_unfinished_job_cannot_be_deleted_until_it_finishes(
    client: Any, auth: dict[str, str], setup: dict[str, Any]
) -> None:
    # Given a queued job that reads both files and distils the uploaded teacher
    job = client.post("/v1/distillation/jobs", headers=auth, json=setup["body"]).json()

    # Then neither file nor the teacher can be deleted while it is queued
    for path in (f"/v1/files/{setup['train']}", f"/v1/files/{setup['validation']}",
                 f"/v1/models/{setup['teacher']}"):
        response = client.delete(path, headers=auth)
        assert response.status_code == 409, (path, response.text)
        assert job["id"] in response.json()["error"]["message"]

    # and once it is cancelled they can, and the job keeps naming them
    client.post(f"/v1/distillation/jobs/{job['id']}/cancel", headers=auth)
    for path in (f"/v1/files/{setup['train']}", f"/v1/models/{setup['teacher']}"):
        assert client.delete(path, headers=auth).status_code == 200, path
    after = client.get(f"/v1/distillation/jobs/{job['id']}", headers=auth).json()
    assert (after["training_file"], after["teacher"]["model"]) == (
        setup["train"], setup["teacher"])
