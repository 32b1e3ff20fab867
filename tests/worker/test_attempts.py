"""An attempt works in a folder of its own and starts from everything the attempt before it kept:
the fine-tuned teacher, the teacher's cached outputs, the best epoch's student and the newest
checkpoints, linked in rather than copied."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from app.jobs import workspace
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from distillation.export.selection import EpochSelector
from tests.factories.api import job_body, sentiment_files, upload_model_dir
from tests.factories.faults import job_events, trained_steps
from tests.factories.worker import reconcile_now

# What the core keeps in a work folder, and what of it the next attempt gets (worker/attempts.py).
CARRIED = {"checkpoints", "teacher", "teacher_cache.pt", "best"}
REBUILT = {"pruned_tokenizer"}  # every attempt prunes its own


class WorkerDied(BaseException):
    """Stands for the worker process dying: no `except Exception` in the runner sees it."""


def test_a_new_attempt_starts_from_everything_the_last_one_kept(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runner import execute_job

    # Given a job that fine-tunes its teacher, caches its outputs, keeps its best epoch, prunes
    # the student's vocabulary and checkpoints every other step
    train_id, val_id = sentiment_files(client, auth, train=64, validation=16)
    teacher = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    body = job_body(teacher=teacher, training_file=train_id, validation_file=val_id)
    body["teacher"]["finetune"] = {"epochs": 1, "min_steps": 0}
    body["student"]["prune_vocabulary"] = True
    body["hyperparameters"].update(epochs=2, checkpoint_every_steps=2, log_every_steps=1)
    job_id = client.post("/v1/distillation/jobs", headers=auth, json=body).json()["id"]

    # When its worker dies after training, before the export
    def die(self: EpochSelector, student: Any, evals: Any) -> Any:
        raise WorkerDied

    with monkeypatch.context() as patch:
        patch.setattr(EpochSelector, "select", die)
        with pytest.raises(WorkerDied):
            execute_job(job_id, settings=settings)
    first = workspace.work_dir(settings, job_id, 1)
    # (a kind of state this does not know would be lost to the next attempt: classify it)
    assert {p.name for p in first.iterdir()} == CARRIED | REBUILT
    best_epoch = json.loads((first / "best" / "best.json").read_text())["epoch"]

    # and another worker takes the job over (its folder kept for the test to look at)
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id)
                        .values(heartbeat_at=time.time() - 3600))
    assert reconcile_now(settings)["queued"] == [job_id]
    monkeypatch.setattr(workspace, "remove", lambda settings, job_id: None)
    assert execute_job(job_id, settings=settings) == "succeeded"

    # Then the second attempt fine-tuned nothing, cached nothing and trained no step again
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    second = next(i for i, e in enumerate(events) if "started attempt 2" in e["message"])
    again = [e["message"] for e in events[second:]]
    assert "Using the teacher fine-tuned by an earlier attempt of this job." in again
    assert any(m.startswith("Reusing the teacher's cached outputs") for m in again), again
    assert not any("finetune_teacher" in m or "cache_teacher" in m for m in again), again
    assert trained_steps(events[second:]) == []
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    resumed = [e["data"]["resumed_from_step"] for e in events[second:]
               if e["data"] and "resumed_from_step" in e["data"]]
    assert resumed == [job["progress"]["total_steps"]]
    # and exported the epoch the first attempt had found best
    model = client.get(f"/v1/models/{job['result_model']}", headers=auth).json()
    assert model["report"]["epoch_selection"]["epoch"] == best_epoch
    # from its own folder, whose files are the first attempt's, linked
    second_dir = workspace.work_dir(settings, job_id, 2)
    assert {p.name for p in second_dir.iterdir()} >= CARRIED
    for name in ("teacher_cache.pt", "teacher/model.safetensors"):
        assert (second_dir / name).stat().st_ino == (first / name).stat().st_ino


def test_the_prompts_the_teacher_wrote_go_to_the_next_attempt(settings: Any) -> None:
    from app.jobs.lifecycle import Lease
    from distillation.layout import GENERATED_PROMPTS, GENERATED_SET
    from worker.attempts import prepare

    # Given a first attempt that stored its teacher's prompts and wrote the generated set
    first = workspace.work_dir(settings, "job-prompts", 1)
    first.mkdir(parents=True)
    (first / GENERATED_PROMPTS).write_text('{"header": {}, "replies": []}')
    (first / GENERATED_SET).write_text('{"messages": []}\n')

    # When the next attempt starts
    second = prepare(settings, Lease(job_id="job-prompts", worker_id="w", attempt=2))

    # Then it has the prompts, linked, and writes its own generated set
    assert (second / GENERATED_PROMPTS).stat().st_ino == (first / GENERATED_PROMPTS).stat().st_ino
    assert not (second / GENERATED_SET).exists()


def test_the_time_budget_plan_goes_to_the_next_attempt(settings: Any) -> None:
    from app.jobs.lifecycle import Lease
    from distillation.layout import TIME_BUDGET_PLAN
    from worker.attempts import prepare

    # Given a first attempt that planned its time budget
    first = workspace.work_dir(settings, "job-budget", 1)
    first.mkdir(parents=True)
    (first / TIME_BUDGET_PLAN).write_text('{"epochs": 2}')

    # When the next attempt starts
    second = prepare(settings, Lease(job_id="job-budget", worker_id="w", attempt=2))

    # Then it has the plan, linked, so it trains to the same plan
    assert (second / TIME_BUDGET_PLAN).stat().st_ino == (first / TIME_BUDGET_PLAN).stat().st_ino
