"""Ids and values no object can have: a NUL character (Postgres refuses to compare or store
text holding one) answers 400 naming the field where it can, never 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories.api import assert_error, job_body, sentiment_files

URLS = [
    ("/v1/files/file-a%00b", "file_id"),
    ("/v1/files?after=file-a%00b", "after"),
    ("/v1/distillation/jobs/job-a%00b", "job_id"),
    ("/v1/distillation/jobs/job-a%00b/events", "job_id"),
    ("/v1/distillation/jobs?after=job-%00", "after"),
    ("/v1/models/model-a%00b", "model_id"),
    ("/v1/models/model-a%00b/download", "model_id"),
]


@pytest.mark.parametrize(("url", "param"), URLS)
def test_nul_in_the_url_is_a_400_naming_it(client: Any, auth: dict[str, str], url: str,
                                           param: str) -> None:
    assert_error(client.get(url, headers=auth), 400, code="invalid_request", param=param)


@pytest.mark.parametrize("field", ["training_file", "validation_file", "teacher"])
def test_nul_in_a_job_body_id_is_a_400(client: Any, auth: dict[str, str], field: str) -> None:
    train, validation = sentiment_files(client, auth, train=8, validation=4)
    body = job_body(teacher="model-0", training_file=train, validation_file=validation)
    if field == "teacher":
        body["teacher"]["model"] = "model-\x00"
    else:
        body[field] = "file-\x00"

    response = client.post("/v1/distillation/jobs", headers=auth, json=body)

    assert_error(response, 400)
    assert client.get("/v1/distillation/jobs", headers=auth).json()["data"] == []
