"""Jobs on an S3-compatible store, run by workers that share no folder with the API or with each
other: a job killed on one worker resumes on another from the checkpoint in the store, and a
checkpoint whose upload never finished is not trusted."""

from __future__ import annotations

import io
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from app.jobs import workspace
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from app.storage.object_store import open_store
from distillation.export.selection import EpochSelector
from tests.factories.api import job_body, sentiment_files, upload_model_dir
from tests.factories.faults import hold_env, job_events
from tests.factories.worker import FINAL, create_job, reconcile_now, start_worker, stop_worker, wait_for
from tests.storage.conftest import worker_env


def make_stale(settings: Any, job_id: str) -> None:
    """Age the job's heartbeat, as a worker that died long ago leaves it, and re-queue it."""
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id)
                        .values(heartbeat_at=time.time() - 3600))
    assert reconcile_now(settings)["queued"] == [job_id]


def resumed_steps(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["resumed_from_step"] for e in events
            if e["data"] and "resumed_from_step" in e["data"]]


def test_a_job_killed_on_one_worker_finishes_on_another_from_the_store(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    store = open_store(settings)
    # Given a worker with a folder of its own training a job that checkpoints every 10 steps
    # (40 steps over two epochs; held at step 12 until it is killed)
    log = tmp_path / "workers.log"
    first = start_worker(settings, log=log, **worker_env(tmp_path, "worker-1"),
                         **hold_env(12, tmp_path / "never-released"))
    try:
        job_id, _ = create_job(client, auth, tiny_teacher_dir, train=80, validation=16,
                               epochs=2, batch_size=4, checkpoint_every_steps=10,
                               log_every_steps=1)
        # once the API lists a checkpoint (read from the store: it has no copy of its own)
        deadline = time.monotonic() + 240
        while not (listed := client.get(f"/v1/distillation/jobs/{job_id}/checkpoints",
                                        headers=auth).json()["data"]):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
    finally:
        # When that worker is killed outright
        stop_worker(first, signal.SIGKILL)
    published = listed[0]["step"]
    assert published >= 10
    assert not (settings.resolved_data_dir / "jobs" / job_id).exists()

    # and the job goes to a second worker on an empty folder of its own
    make_stale(settings, job_id)
    second = start_worker(settings, log=log, **worker_env(tmp_path, "worker-2"))
    try:
        done = wait_for(client, auth, job_id, FINAL, timeout=400)
        # (the worker removes the job's files just after it records the success: let it)
        deadline = time.monotonic() + 60
        while store.list(f"jobs/{job_id}") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop_worker(second)

    # Then it resumed from a checkpoint the first worker had published, and succeeded
    assert (done["status"], done["attempts"], done["error"]) == ("succeeded", 2, None)
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    resumed = resumed_steps(events)
    assert len(resumed) == 1 and resumed[0] >= published, events
    # and the store keeps its model, not its working state
    assert store.list(f"jobs/{job_id}") == {}
    model_id = done["result_model"]
    # which the API downloads and serves from the store
    response = client.get(f"/v1/models/{model_id}/download", headers=auth)
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        assert "config.json" in tar.getnames()
    answer = client.post(f"/v1/models/{model_id}/predict", headers=auth,
                         json={"inputs": ["a fine film"]})
    assert answer.status_code == 200, answer.text


class WorkerDied(BaseException):
    """Stands for the worker process dying: no `except Exception` in the runner sees it."""


def test_a_checkpoint_whose_upload_never_finished_is_not_resumed_from(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runner import execute_job

    store = open_store(settings)
    machine_1 = settings.model_copy(update={"scratch_dir": tmp_path / "machine-1"})
    machine_2 = settings.model_copy(update={"scratch_dir": tmp_path / "machine-2"})
    # Given a job (8 steps, a checkpoint every 2) whose first attempt dies after training
    train_id, val_id = sentiment_files(client, auth, train=64, validation=16)
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    body = job_body(teacher=teacher, training_file=train_id, validation_file=val_id)
    body["hyperparameters"].update(epochs=2, checkpoint_every_steps=2, log_every_steps=1)
    job_id = client.post("/v1/distillation/jobs", headers=auth, json=body).json()["id"]

    def die(self: EpochSelector, student: Any, evals: Any) -> Any:
        raise WorkerDied

    with monkeypatch.context() as patch:
        patch.setattr(EpochSelector, "select", die)
        with pytest.raises(WorkerDied):
            execute_job(job_id, settings=machine_1)
    work = f"jobs/{job_id}/attempt-1/work"
    published = store.list(work)
    assert {"checkpoints/step-8/checkpoint.json", "checkpoints/step-6/checkpoint.json",
            "teacher_cache.pt", "best/best.json"} <= set(published)
    # and whose newest checkpoint's upload was cut short: its files, not its marker
    store.remove(f"{work}/checkpoints/step-8/checkpoint.json")
    assert [c["step"] for c in client.get(f"/v1/distillation/jobs/{job_id}/checkpoints",
                                          headers=auth).json()["data"]] == [6]

    # When another machine, with an empty scratch folder, takes the job over
    make_stale(settings, job_id)
    monkeypatch.setattr(workspace, "remove", lambda settings, job_id: None)  # kept to look at
    assert execute_job(job_id, settings=machine_2) == "succeeded"

    # Then it resumed from the last complete checkpoint and reused the teacher's cache
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    second = next(i for i, e in enumerate(events) if "started attempt 2" in e["message"])
    assert resumed_steps(events[second:]) == [6]
    assert any(e["message"].startswith("Reusing the teacher's cached outputs")
               for e in events[second:])
    # having pulled the complete checkpoints only
    pulled = tmp_path / "machine-2" / "jobs" / job_id / "attempt-1" / "work" / "checkpoints"
    assert sorted(p.name for p in pulled.iterdir()) == ["step-6"]
