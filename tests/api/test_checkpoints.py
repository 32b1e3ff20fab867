"""A job whose worker dies after a checkpoint: the checkpoints endpoint lists what it saved (for
its tenant only), the reconciler re-queues it, and the next attempt resumes and finishes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from app.jobs.tables import JobRow
from app.kit.db import session_scope
from distillation.training.checkpoint import Checkpointer
from distillation.training.loop import LoopState
from tests.factories.api import job_body, sentiment_files, upload_model_dir
from tests.factories.worker import reconcile_now


class WorkerDied(BaseException):
    """Stands for the worker process dying: no `except Exception` in the runner sees it."""


def test_checkpoints_of_a_killed_job_are_listed_and_the_next_attempt_resumes(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], settings: Any,
    tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runner import execute_job

    # Given a job of 4 optimizer steps that checkpoints every step
    train_id, val_id = sentiment_files(client, auth, train=64, validation=16)
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    body = job_body(teacher=teacher, training_file=train_id, validation_file=val_id)
    body["hyperparameters"].update(checkpoint_every_steps=1, log_every_steps=1)
    job_id = client.post("/v1/distillation/jobs", headers=auth, json=body).json()["id"]
    url = f"/v1/distillation/jobs/{job_id}/checkpoints"
    assert client.get(url, headers=auth).json()["data"] == []

    # When its worker dies right after saving the checkpoint of step 2
    save = Checkpointer.save

    def save_then_die(self: Checkpointer, state: LoopState) -> Path:
        path = save(self, state)
        if state.result.steps == 2:
            raise WorkerDied
        return path

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(WorkerDied):
        execute_job(job_id, settings=settings)
    monkeypatch.setattr(Checkpointer, "save", save)

    # Then the endpoint lists the two newest checkpoints, newest first, to this tenant only
    listed = client.get(url, headers=auth)
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["object"] == "list" and page["has_more"] is False
    assert [c["id"] for c in page["data"]] == ["ckpt-2", "ckpt-1"]
    newest = page["data"][0]
    assert newest["object"] == "distillation.job.checkpoint"
    assert newest["step"] == 2 and newest["epoch"] == 1
    assert newest["size_bytes"] > 0 and isinstance(newest["train_loss"], float)
    assert abs(newest["created_at"] - time.time()) < 300
    assert client.get(url, headers=other_auth).status_code == 404
    missing = client.get("/v1/distillation/jobs/job-missing/checkpoints", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    # When the reconciler finds the dead worker's job and another worker runs it
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id)
                        .values(heartbeat_at=time.time() - 3600))
    assert reconcile_now(settings)["queued"] == [job_id]
    assert execute_job(job_id, settings=settings) == "succeeded"

    # Then the second attempt resumed from step 2 and trained steps 3 and 4 only
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded" and job["attempts"] == 2
    events = client.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000",
                        headers=auth).json()["data"]
    resumed = [e for e in events if e["data"] and "resumed_from_step" in e["data"]]
    assert [e["data"]["resumed_from_step"] for e in resumed] == [2]
    assert resumed[0]["message"] == "Resumed from checkpoint at step 2 (epoch 1)."
    # Eval events carry the latest train_loss too; the per-step events are the ones with a rate.
    steps = [e["data"]["step"] for e in events
             if e["type"] == "metrics" and "learning_rate" in e["data"]]
    assert steps == [1, 2, 3, 4]
    # and, finished for good, the job's working directory and its checkpoints are gone
    assert client.get(url, headers=auth).json()["data"] == []
    assert not (settings.jobs_dir / job_id).exists()
