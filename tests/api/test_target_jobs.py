"""A student sized to a target through the API: accepted when a candidate can meet it, refused
at creation naming the field and the closest candidate when none can, nothing queued."""

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
)


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
