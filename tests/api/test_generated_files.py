"""Files of purpose `generated`: never uploaded; the set a job's teacher wrote is registered by
the worker when the job succeeds, named in its events and report, listed and downloaded by its
tenant and by no one else. And every file's bytes download as they were stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import assert_error, job_body, upload_model_dir, upload_records
from tests.factories.datagen import save_stopping_llama
from tests.factories.faults import job_events
from tests.factories.lm import copy_records

JOBS = "/v1/distillation/jobs"


def test_a_generated_file_cannot_be_uploaded(client: Any, auth: dict[str, str],
                                             settings: Any) -> None:
    body = b'{"messages": "x"}\n'
    response = client.post("/v1/files", headers=auth, data={"purpose": "generated"},
                           files={"file": ("mine.jsonl", body)})

    error = assert_error(response, 400, param="purpose", code="purpose_not_uploadable")
    assert "written by the service" in error["message"]
    assert client.get("/v1/files", headers=auth).json()["data"] == []
    assert not settings.files_dir.exists() or not any(settings.files_dir.iterdir())


def test_an_upload_downloads_as_it_was_sent(client: Any, auth: dict[str, str],
                                            other_auth: dict[str, str]) -> None:
    body = b"text,label\n\"good, really\",positive\nbad film,negative\n"
    file_id = client.post("/v1/files", headers=auth, data={"purpose": "train"},
                          files={"file": ("train.csv", body)}).json()["id"]

    response = client.get(f"/v1/files/{file_id}/content", headers=auth)

    assert response.status_code == 200
    assert response.content == body
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == f'attachment; filename="{file_id}.csv"'
    assert_error(client.get(f"/v1/files/{file_id}/content", headers=other_auth), 404,
                 param="file_id")


@pytest.fixture(scope="module")
def chat_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_stopping_llama(tmp_path_factory.mktemp("stopping_llama"))


def test_the_set_a_job_wrote_is_its_tenants_generated_file(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], settings: Any,
    chat_teacher: Path,
) -> None:
    from worker.runner import execute_job

    # Given a causal-lm job whose request asks the teacher to write 4 prompts like the examples
    teacher = upload_model_dir(client, auth, chat_teacher)["id"]
    train = upload_records(client, auth, copy_records(16, seed=1))
    examples = upload_records(client, auth, copy_records(8, seed=5), name="examples.jsonl")
    body = job_body(teacher=teacher, training_file=train, task="causal-lm",
                    student={"architecture": {"num_layers": 1}, "init": "teacher"},
                    data={"max_seq_length": 64},
                    hyperparameters={"epochs": 1, "batch_size": 8, "max_steps": 2, "seed": 1},
                    data_generation={"task_description": "Copy the words after 'copy'.",
                                     "examples_file": examples, "num_samples": 4,
                                     "temperature": 1.0})
    created = client.post(JOBS, headers=auth, json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    # When it runs
    assert execute_job(job_id, settings=settings) == "succeeded"

    # Then its events say what the teacher wrote and which file holds it
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    wrote = [e for e in events if e["message"].startswith("The teacher wrote")
             and "data_generation" in (e["data"] or {})]
    assert len(wrote) == 1 and wrote[0]["data"]["data_generation"]["kept"] == 4
    named = [e["data"]["generated_file"] for e in events
             if e["data"] and e["data"].get("generated_file")]
    file_id = named[0]
    assert named == [file_id, file_id]  # its own event, and the job's success
    # and so does the student's report
    job = client.get(f"{JOBS}/{job_id}", headers=auth).json()
    model = client.get(f"/v1/models/{job['result_model']}", headers=auth).json()
    assert model["report"]["data_generation"]["file"] == file_id
    assert model["report"]["training_examples"] == {
        "labelled": 16, "generated": 4, "file answers": 16, "teacher answers": 4}

    # and the tenant lists it among its files, of purpose generated
    listed = client.get("/v1/files?purpose=generated", headers=auth).json()["data"]
    assert [f["id"] for f in listed] == [file_id]
    file = client.get(f"/v1/files/{file_id}", headers=auth).json()
    assert (file["purpose"], file["format"], file["num_records"], file["columns"]) == \
        ("generated", "jsonl", 4, ["messages"])
    assert file["filename"] == f"{job_id}-generated.jsonl"
    assert {f["id"] for f in client.get("/v1/files", headers=auth).json()["data"]} == \
        {train, examples, file_id}

    # and downloads it (the job's own folder is gone by now) as messages records
    response = client.get(f"/v1/files/{file_id}/content", headers=auth)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert int(response.headers["content-length"]) == file["bytes"] == len(response.content)
    records = [json.loads(line) for line in response.text.splitlines()]
    assert len(records) == 4
    assert all(r["messages"][0]["role"] == "user" for r in records)

    # while another tenant sees nothing of it
    assert client.get("/v1/files", headers=other_auth).json()["data"] == []
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        assert_error(client.get(path, headers=other_auth), 404, param="file_id")
