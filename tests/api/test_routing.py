"""Routing by size on Postgres and Redis: the estimate stored on the job and shown in it, the
wake-up sent to the smallest queue whose workers hold the job, the 400s for a job no configured
worker could run, and the reconciler re-sending to the job's own queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import update

from app.jobs.tables import JobRow
from app.kit.db import session_scope
from distillation.models.loading import load_config
from distillation.students.build import sized_config
from distillation.students.memory import estimate_memory
from tests.factories.api import (
    REDIS_URL,
    assert_error,
    job_body,
    sentiment_files,
    upload_model_dir,
)
from tests.factories.worker import reconcile_now

ARCH = {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}


@pytest.fixture
def body(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> dict[str, Any]:
    train_id, val_id = sentiment_files(client, auth, train=16, validation=8)
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    return job_body(teacher=teacher, training_file=train_id, validation_file=val_id)


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    from app.settings import get_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def waiting(redis_db: int, queue: str) -> int:
    return int(redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").llen(queue))


def expected_bytes(teacher_dir: Path, *, batch_size: int, max_length: int = 32,
                   devices: int = 1) -> int:
    teacher = load_config(teacher_dir)
    return estimate_memory(teacher, sized_config(teacher, ARCH), task="sequence-classification",
                           batch_size=batch_size, max_length=max_length, devices=devices).total


def test_by_default_every_job_goes_to_the_training_queue_with_its_estimate(
    client: Any, auth: dict[str, str], body: dict[str, Any], tiny_teacher_dir: Path,
    redis_db: int,
) -> None:
    response = client.post("/v1/distillation/jobs", headers=auth, json=body)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["resources"] == {"estimated_memory_bytes": expected_bytes(tiny_teacher_dir,
                                                                         batch_size=16),
                                "queue": "training"}
    assert job["hyperparameters"]["devices"] == 1
    assert waiting(redis_db, "training") == 1
    fetched = client.get(f"/v1/distillation/jobs/{job['id']}", headers=auth).json()
    assert fetched["resources"] == job["resources"]


def test_a_job_goes_to_the_smallest_queue_that_holds_it(
    client: Any, auth: dict[str, str], body: dict[str, Any], tiny_teacher_dir: Path,
    redis_db: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a small class that holds batch 16 but not batch 64, and a large one
    small = expected_bytes(tiny_teacher_dir, batch_size=16)
    assert expected_bytes(tiny_teacher_dir, batch_size=64) > small
    configure(monkeypatch, DISTILL_WORKER_QUEUES=f"large=1GiB,small={small}")

    # When a job of each size is created
    little = client.post("/v1/distillation/jobs", headers=auth, json=body).json()
    body["hyperparameters"]["batch_size"] = 64
    big = client.post("/v1/distillation/jobs", headers=auth, json=body).json()

    # Then each is stored with its queue and its wake-up waits there, not in the default queue
    assert little["resources"]["queue"] == "small" and big["resources"]["queue"] == "large"
    assert waiting(redis_db, "small") == 1 and waiting(redis_db, "large") == 1
    assert waiting(redis_db, "training") == 0


def test_a_job_no_configured_worker_could_hold_is_refused_naming_the_field(
    client: Any, auth: dict[str, str], body: dict[str, Any], redis_db: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(monkeypatch, DISTILL_WORKER_QUEUES="small=4MiB,medium=16MiB")
    body["hyperparameters"]["batch_size"] = 512
    body["data"]["max_seq_length"] = 128
    error = assert_error(client.post("/v1/distillation/jobs", headers=auth, json=body), 400,
                         code="job_too_large", param="hyperparameters.batch_size")
    assert "largest configured worker holds 16.0 MiB per device" in error["message"]
    assert "512 examples of 128 tokens" in error["message"]
    assert client.get("/v1/distillation/jobs", headers=auth).json()["data"] == []
    assert waiting(redis_db, "medium") == 0

    # A big student (not the batch) is named as the student's field
    body["hyperparameters"]["batch_size"] = 1
    body["data"]["max_seq_length"] = 8
    body["student"]["architecture"] = {"num_layers": 8, "hidden_size": 512, "num_heads": 8,
                                       "intermediate_size": 2048}
    assert_error(client.post("/v1/distillation/jobs", headers=auth, json=body), 400,
                 code="job_too_large", param="student.architecture")


def test_devices_need_a_worker_class_with_that_many(
    client: Any, auth: dict[str, str], body: dict[str, Any], tiny_teacher_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body["hyperparameters"]["devices"] = 2
    error = assert_error(client.post("/v1/distillation/jobs", headers=auth, json=body), 400,
                         code="insufficient_devices", param="hyperparameters.devices")
    assert "at most 1 device each" in error["message"]

    configure(monkeypatch, DISTILL_WORKER_QUEUES="one=1GiB,pair=1GiBx2")
    job = client.post("/v1/distillation/jobs", headers=auth, json=body).json()
    # Per device: half the batch (the weights and optimizer state are whole on each)
    assert job["resources"] == {"queue": "pair", "estimated_memory_bytes": expected_bytes(
        tiny_teacher_dir, batch_size=16, devices=2)}


def test_the_reconciler_resends_a_lost_wakeup_to_the_jobs_queue(
    client: Any, auth: dict[str, str], body: dict[str, Any], settings: Any, redis_db: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a job routed to `large`, whose wake-up the broker lost
    configure(monkeypatch, DISTILL_WORKER_QUEUES="tiny=1KiB,large=1GiB",
              DISTILL_QUEUED_RESEND_AFTER_S="0")
    job = client.post("/v1/distillation/jobs", headers=auth, json=body).json()
    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
    from app.settings import get_settings

    # When the reconciler runs, the wake-up goes back to `large`
    assert reconcile_now(get_settings())["resent"] == [job["id"]]
    assert waiting(redis_db, "large") == 1 and waiting(redis_db, "training") == 0
    # and once the message waits there, the next pass sees it and sends no second one
    assert reconcile_now(get_settings())["resent"] == []

    # When the classes are reconfigured without `large`, the job goes to one that holds it
    configure(monkeypatch, DISTILL_WORKER_QUEUES="tiny=1KiB,huge=2GiBx2")
    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
    assert reconcile_now(get_settings())["resent"] == [job["id"]]
    assert waiting(redis_db, "huge") == 1

    # and a job created before routing existed (no queue) wakes the default queue
    configure(monkeypatch, DISTILL_WORKER_QUEUES="")
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(JobRow).values(queue=None, estimated_memory_bytes=None))
    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
    assert reconcile_now(get_settings())["resent"] == [job["id"]]
    assert waiting(redis_db, "training") == 1
    shown = client.get(f"/v1/distillation/jobs/{job['id']}", headers=auth).json()
    assert shown["resources"] == {"estimated_memory_bytes": None, "queue": "training"}


def test_a_job_whose_memory_cannot_be_estimated_is_refused_not_routed_unchecked(
    client: Any, auth: dict[str, str], body: dict[str, Any], redis_db: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given worker classes that all have a memory limit, and configs the estimate cannot size
    from app.jobs import resources

    configure(monkeypatch, DISTILL_WORKER_QUEUES="small=4MiB,large=1GiB")

    def unsizable(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("hidden_size")

    monkeypatch.setattr(resources, "estimate_job", unsizable)

    # When the job is created, then it is refused with a clear 400 and sent nowhere
    error = assert_error(client.post("/v1/distillation/jobs", headers=auth, json=body), 400,
                         code="memory_estimate_failed", param="teacher.model")
    assert "Could not estimate this job's accelerator memory" in error["message"]
    assert client.get("/v1/distillation/jobs", headers=auth).json()["data"] == []
    assert waiting(redis_db, "large") == 0 and waiting(redis_db, "small") == 0

    # The default queue has no memory limit and needs no estimate: the job goes there
    configure(monkeypatch, DISTILL_WORKER_QUEUES="")
    response = client.post("/v1/distillation/jobs", headers=auth, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["resources"] == {"estimated_memory_bytes": None, "queue": "training"}
