"""The queue end to end: a real Celery worker process on Redis runs a job on a tiny teacher, a
duplicated message does not train twice, cancellation stops a running job, and the reconciler
re-sends lost messages and recovers jobs of dead workers."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from sqlalchemy import update
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.jobs import lifecycle
from app.jobs.queue import send_wakeup
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from tests.factories.api import REDIS_URL, job_body, sentiment_files, upload_model_dir, upload_records
from tests.factories.records import sentiment_records
from tests.factories.worker import create_job, reconcile_now, wait_for


@pytest.mark.usefixtures("export_runtimes")  # before `worker`: it exports ONNX too
def test_full_job_through_a_real_worker(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, worker: Any,
    redis_db: int, tmp_path: Path,
) -> None:
    # Given a tiny teacher and a toy sentiment set
    train_id, val_id = sentiment_files(client, auth, train=96, validation=32)
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    body = job_body(teacher=teacher, training_file=train_id, validation_file=val_id)

    # When the job is created and its wake-up message is delivered twice
    job = client.post("/v1/distillation/jobs", headers=auth, json=body).json()
    assert send_wakeup(job["id"], settings=settings)
    done = wait_for(client, auth, job["id"], {"succeeded", "failed", "cancelled"})

    # Then it ran once and succeeded with a report
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1 and done["progress"]["percent"] == 100.0
    assert done["teacher_model"] is None  # its teacher was not fine-tuned
    assert done["metrics"]["eval"]["accuracy"] is not None
    events = client.get(f"/v1/distillation/jobs/{job['id']}/events?limit=1000",
                        headers=auth).json()["data"]
    messages = [e["message"] for e in events]
    assert sum("started attempt" in m for m in messages) == 1
    stages = [e["data"]["stage"] for e in events if e["data"] and "stage" in e["data"]]
    assert stages[:2] == ["distill", "evaluate"] and "export" in stages
    assert any(e["type"] == "metrics" and "train_loss" in e["data"] for e in events)

    model_id = done["result_model"]
    model = client.get(f"/v1/models/{model_id}", headers=auth).json()
    assert model["source_job"] == job["id"] and model["labels"] == ["negative", "positive"]
    assert model["report"]["teacher"]["accuracy"] is not None and model["report"]["retention"]

    # The download is a Hugging Face directory that transformers loads as it is
    archive = client.get(f"/v1/models/{model_id}/download", headers=auth)
    assert archive.status_code == 200
    assert archive.headers["content-type"].startswith("application/gzip")
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "dl", filter="data")
    model_dir = next(p.parent for p in (tmp_path / "dl").rglob("config.json"))
    assert (model_dir / "model.safetensors").exists() and (model_dir / "README.md").exists()
    hf_model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [r["text"] for r in sentiment_records(8, seed=9)]
    with torch.no_grad():
        logits = hf_model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    local = [hf_model.config.id2label[int(i)] for i in logits.argmax(-1)]
    served = client.post(f"/v1/models/{model_id}/predict", headers=auth, json={"inputs": texts})
    assert served.status_code == 200, served.text
    assert [d["label"] for d in served.json()["data"]] == local
    # the worker's student was exported to ONNX too, and the registry kept its runtimes
    assert list(model["report"]["runtimes"]["runtimes"]) == ["torch", "onnx", "onnx-int8"]
    onnx_archive = client.get(f"/v1/models/{model_id}/download?format=onnx-int8", headers=auth)
    assert onnx_archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(onnx_archive.content), mode="r:gz") as tar:
        assert {"model.onnx", "config.json", "README.md"} <= set(tar.getnames())

    # and the duplicated message was consumed without a second run
    deadline = time.monotonic() + 20
    r = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")
    while r.llen("training") and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    again = client.get(f"/v1/distillation/jobs/{job['id']}", headers=auth).json()
    assert again["attempts"] == 1 and again["status"] == "succeeded"


def test_cancel_stops_a_running_job_within_seconds(
    client: Any, auth: dict[str, str], tiny_teacher_dir: Path, worker: Any
) -> None:
    train_id = upload_records(client, auth, sentiment_records(400, seed=3))
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    body = job_body(teacher=teacher, training_file=train_id)
    body["hyperparameters"].update({"epochs": 100, "batch_size": 4})
    job_id = client.post("/v1/distillation/jobs", headers=auth, json=body).json()["id"]
    running = wait_for(client, auth, job_id, {"running", "failed"})
    assert running["status"] == "running"

    asked = time.monotonic()
    cancel = client.post(f"/v1/distillation/jobs/{job_id}/cancel", headers=auth).json()
    done = wait_for(client, auth, job_id, {"cancelled", "succeeded", "failed"}, timeout=60)

    assert cancel["status"] in ("cancelling", "cancelled")
    assert done["status"] == "cancelled" and done["result_model"] is None
    assert time.monotonic() - asked < 30


def test_a_message_for_a_claimed_job_does_not_run_it_again(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path
) -> None:
    from worker.runner import execute_job

    job_id, _ = create_job(client, auth, tiny_teacher_dir, train=32, validation=16, max_steps=2)

    assert execute_job(job_id, settings=settings) == "succeeded"
    assert execute_job(job_id, settings=settings) is None  # the redelivered message

    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    models = [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    assert models[:2] == ["all-minilm-l6-v2", "smollm2-135m-instruct"]  # the built-ins
    assert len(models) == 4  # and one teacher and one student


def _age(settings: Any, job_id: str, **fields: float) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(**fields))


def test_reconciler_resends_a_lost_message(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, redis_db: int
) -> None:
    job_id, _ = create_job(client, auth, tiny_teacher_dir)
    r = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")
    r.flushdb()  # the broker lost the message

    assert reconcile_now(settings)["resent"] == []  # too recent to be considered lost
    _age(settings, job_id, enqueued_at=time.time() - 3600)
    done = reconcile_now(settings)

    assert done["resent"] == [job_id] and r.llen("training") == 1


def test_reconciler_requeues_then_fails_a_job_whose_worker_died(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, redis_db: int
) -> None:
    job_id, _ = create_job(client, auth, tiny_teacher_dir)
    r = redis.Redis.from_url(f"{REDIS_URL}/{redis_db}")

    statuses = []
    for attempt in range(settings.max_attempts):
        r.flushdb()
        with session_scope(settings.sqlalchemy_url) as session:
            assert lifecycle.claim(session, job_id=job_id, worker_id=f"dead-{attempt}")
        _age(settings, job_id, heartbeat_at=time.time() - 3600)
        reconcile_now(settings)
        job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
        statuses.append(job["status"])

    assert statuses == ["queued"] * (settings.max_attempts - 1) + ["failed"]
    assert job["error"]["code"] == "worker_lost" and job["attempts"] == settings.max_attempts
    events = client.get(f"/v1/distillation/jobs/{job_id}/events", headers=auth).json()["data"]
    assert sum("re-queued" in e["message"] for e in events) == settings.max_attempts - 1


def test_a_cancel_that_arrives_as_training_ends_is_honoured(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.runner as runner

    job_id, teacher = create_job(client, auth, tiny_teacher_dir, train=32, validation=16,
                                 max_steps=2)
    real_run_job = runner.run_job

    def run_then_cancel(config: Any, reporter: Any) -> Any:
        result = real_run_job(config, reporter)
        cancel = client.post(f"/v1/distillation/jobs/{job_id}/cancel", headers=auth).json()
        assert cancel["status"] == "cancelling"  # acknowledged before the worker records success
        return result

    monkeypatch.setattr(runner, "run_job", run_then_cancel)

    assert runner.execute_job(job_id, settings=settings) == "cancelled"
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "cancelled" and job["result_model"] is None
    assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]] == [
        "all-minilm-l6-v2", "smollm2-135m-instruct", teacher]
