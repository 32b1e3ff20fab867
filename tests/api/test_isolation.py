"""Tenant isolation: every endpoint that takes an id answers another tenant's id with a 404
identical to the one for an id that does not exist, and leaves the object as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import job_body, sentiment_files, upload_model_dir

# (method, path with the owner's ids in braces, JSON body)
ENDPOINTS = [
    ("GET", "/v1/files/{file}", None),
    ("GET", "/v1/files/{file}/content", None),
    ("DELETE", "/v1/files/{file}", None),
    ("GET", "/v1/files?after={file}", None),
    ("GET", "/v1/distillation/jobs/{job}", None),
    ("POST", "/v1/distillation/jobs/{job}/cancel", None),
    ("GET", "/v1/distillation/jobs/{job}/events", None),
    ("GET", "/v1/distillation/jobs/{job}/events?after=event-1&limit=5", None),
    ("GET", "/v1/distillation/jobs/{job}/checkpoints", None),
    ("GET", "/v1/distillation/jobs?after={job}", None),
    ("GET", "/v1/models/{model}", None),
    ("GET", "/v1/models/{model}/download", None),
    ("DELETE", "/v1/models/{model}", None),
    ("POST", "/v1/models/{model}/predict", {"inputs": ["a lovely film"]}),
]


@pytest.fixture
def owned(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> dict[str, str]:
    """acme's file, model (a servable classifier) and queued job that uses both."""
    train, validation = sentiment_files(client, auth, train=16, validation=8)
    model = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    job = client.post("/v1/distillation/jobs", headers=auth,
                      json=job_body(teacher=model, training_file=train, validation_file=validation))
    assert job.status_code == 201, job.text
    return {"file": train, "model": model, "job": job.json()["id"]}


def _missing(object_id: str) -> str:
    """An id of the same kind and length that names nothing."""
    prefix, _, rest = object_id.partition("-")
    return f"{prefix}-{'0' * len(rest)}"


def _call(client: Any, headers: dict[str, str], method: str, path: str, body: Any) -> Any:
    return client.request(method, path, headers=headers, json=body)


def _shape(response: Any, object_id: str) -> tuple[int, str | None, str | None, bytes]:
    """What a client can tell a response by: status, type, length and the body (the id named in
    it replaced, so that two ids of one length compare)."""
    return (response.status_code, response.headers.get("content-type"),
            response.headers.get("content-length"),
            response.content.replace(object_id.encode(), b"<id>"))


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_another_tenants_id_reads_as_missing(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], owned: dict[str, str],
    method: str, path: str, body: Any,
) -> None:
    kind = path.split("{")[1].split("}")[0]
    real, missing = owned[kind], _missing(owned[kind])

    # When globex names acme's object, and an object that does not exist
    theirs = _call(client, other_auth, method, path.format(**{kind: real}), body)
    nothing = _call(client, other_auth, method, path.format(**{kind: missing}), body)

    # Then both answers are the same error, byte for byte
    assert theirs.status_code in (400, 404), theirs.text
    assert theirs.json()["error"]["param"] is not None
    assert _shape(theirs, real) == _shape(nothing, missing)
    # And acme's objects are untouched: the job still queued, the file and model still there
    assert client.get(f"/v1/distillation/jobs/{owned['job']}", headers=auth).json()["status"] \
        == "queued"
    assert client.get(f"/v1/files/{owned['file']}", headers=auth).status_code == 200
    assert client.get(f"/v1/models/{owned['model']}", headers=auth).status_code == 200
    # And the owner's own call is no 404 (so the id was real)
    assert _call(client, auth, method, path.format(**owned), body).status_code not in (400, 404)
