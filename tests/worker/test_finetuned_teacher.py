"""The fine-tuned teacher is a model too: a job that fine-tunes its teacher registers it beside
the student (`teacher_model`), and it is listed, described, downloaded and served like a student."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.factories.api import job_body, sentiment_files, upload_model_dir
from tests.factories.records import sentiment_records
from tests.factories.worker import FINAL, wait_for


def test_a_job_that_finetunes_its_teacher_registers_it_as_a_model(
    client: Any, auth: dict[str, str], tiny_base_dir: Path, worker: Any, tmp_path: Path,
) -> None:
    # Given a base teacher (no head) fine-tuned by the job before it distils
    train_id, val_id = sentiment_files(client, auth, train=48, validation=16)
    base = upload_model_dir(client, auth, tiny_base_dir)["id"]
    body = job_body(teacher=base, training_file=train_id, validation_file=val_id)
    body["teacher"]["finetune"] = {"epochs": 2, "learning_rate": 5e-3, "min_steps": 0}

    # When the job runs to the end
    job = client.post("/v1/distillation/jobs", headers=auth, json=body).json()
    done = wait_for(client, auth, job["id"], FINAL)

    # Then the job names its fine-tuned teacher, a model of the tenant beside the student
    assert done["status"] == "succeeded", done
    teacher_id, student_id = done["teacher_model"], done["result_model"]
    assert teacher_id and teacher_id.startswith("model-") and teacher_id != student_id
    listed = {m["id"]: m for m in client.get("/v1/models", headers=auth).json()["data"]}
    assert listed[teacher_id]["source"] == "finetuned"
    teacher = client.get(f"/v1/models/{teacher_id}", headers=auth).json()
    student = client.get(f"/v1/models/{student_id}", headers=auth).json()
    assert teacher == listed[teacher_id] and teacher["source_job"] == job["id"]
    assert teacher["task"] == "sequence-classification"
    assert teacher["labels"] == ["negative", "positive"]
    assert teacher["parameters"] == student["report"]["teacher"]["parameters"]
    # with a report of its own figures: the ones the student's report compares against
    assert teacher["report"]["teacher"] == student["report"]["teacher"]
    assert teacher["report"]["finetune"]["epochs"] == 2
    assert teacher["report"]["finetune"]["base_model"] == base
    events = client.get(f"/v1/distillation/jobs/{job['id']}/events?limit=1000",
                        headers=auth).json()["data"]
    assert any(f"fine-tuned teacher: model {teacher_id}" in e["message"] for e in events)

    # and it downloads as a Hugging Face directory that loads, and predicts as served
    archive = client.get(f"/v1/models/{teacher_id}/download", headers=auth)
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "dl", filter="data")
    model_dir = next(p.parent for p in (tmp_path / "dl").rglob("config.json"))
    assert {"model.safetensors", "README.md", "report.json"} <= {p.name for p in
                                                               model_dir.iterdir()}
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert model.config.num_hidden_layers == 2  # the teacher's depth, not the student's 1
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [r["text"] for r in sentiment_records(8, seed=9)]
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    local = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    served = client.post(f"/v1/models/{teacher_id}/predict", headers=auth, json={"inputs": texts})
    assert served.status_code == 200, served.text
    assert [d["label"] for d in served.json()["data"]] == local

    # Deleting the teacher model leaves the job (and its student) with no dangling id
    assert client.delete(f"/v1/models/{teacher_id}", headers=auth).status_code == 200
    after = client.get(f"/v1/distillation/jobs/{job['id']}", headers=auth).json()
    assert after["teacher_model"] is None and after["result_model"] == student_id
    assert client.get(f"/v1/models/{student_id}", headers=auth).status_code == 200
