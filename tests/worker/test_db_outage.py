"""Database faults while a job runs: writes that fail for a while are retried, writes that fail
for longer are given up without failing the job, and an outcome that cannot be recorded hands the
job back with its checkpoints. The faults are real: a Postgres trigger raises on the writes the
test picks, as a database that refuses writes would."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.jobs import workspace
from app.kit.db import engine_for
from distillation.layout import list_checkpoints
from tests.factories.worker import create_job

FAULTS = """
CREATE TABLE IF NOT EXISTS test_faults (name text PRIMARY KEY);
CREATE OR REPLACE FUNCTION test_fail_when_flagged() RETURNS trigger AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM test_faults WHERE name = TG_ARGV[0]) THEN
    RAISE EXCEPTION 'injected fault: %', TG_ARGV[0];
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_fault_metrics BEFORE INSERT ON job_events FOR EACH ROW
  WHEN (NEW.type = 'metrics') EXECUTE FUNCTION test_fail_when_flagged('metrics');
CREATE TRIGGER test_fault_success BEFORE UPDATE ON jobs FOR EACH ROW
  WHEN (NEW.status = 'succeeded') EXECUTE FUNCTION test_fail_when_flagged('success');
"""
REMOVE = """
DROP TRIGGER IF EXISTS test_fault_metrics ON job_events;
DROP TRIGGER IF EXISTS test_fault_success ON jobs;
DROP TABLE IF EXISTS test_faults;
"""


@pytest.fixture
def faults(settings: Any) -> Iterator[Callable[[str, bool], None]]:
    """`faults(name, on)`: make the database refuse the `metrics` event inserts or the
    `success` status update while `on`."""
    engine = engine_for(settings.sqlalchemy_url)
    with engine.begin() as conn:
        conn.execute(text(REMOVE))
        conn.execute(text(FAULTS))

    def switch(name: str, on: bool) -> None:
        with engine.begin() as conn:
            if on:
                conn.execute(text("INSERT INTO test_faults VALUES (:n) ON CONFLICT DO NOTHING"),
                             {"n": name})
            else:
                conn.execute(text("DELETE FROM test_faults WHERE name = :n"), {"n": name})

    yield switch
    with engine.begin() as conn:
        conn.execute(text(REMOVE))


def events(client: Any, auth: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    return list(client.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000",
                           headers=auth).json()["data"])


def test_metrics_writes_refused_for_a_while_are_retried_and_the_job_succeeds(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    faults: Callable[[str, bool], None], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runner import execute_job

    job_id, _ = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                           batch_size=8, max_steps=6, log_every_steps=1)
    # Given a database that refuses the job's metrics events for the first two seconds
    faults("metrics", True)
    threading.Timer(2.0, faults, args=("metrics", False)).start()

    # When the job runs
    status = execute_job(job_id, settings=settings)

    # Then it succeeded and no metrics event was lost
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert (status, job["status"], job["error"]) == ("succeeded", "succeeded", None)
    metrics = [e for e in events(client, auth, job_id) if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in metrics if "learning_rate" in e["data"]] == list(
        range(1, 7))


def test_writes_refused_past_the_retry_window_are_given_up_and_the_job_succeeds(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    faults: Callable[[str, bool], None], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runner import execute_job

    monkeypatch.setattr(settings, "db_write_retry_s", 0.3)
    job_id, _ = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                           batch_size=8, max_steps=4, log_every_steps=1)
    # Given a database that refuses every metrics event of the run
    faults("metrics", True)

    # When the job runs
    status = execute_job(job_id, settings=settings)

    # Then it succeeded all the same, and a warning says how many writes were lost
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert (status, job["status"], job["error"]) == ("succeeded", "succeeded", None)
    found = events(client, auth, job_id)
    assert not [e for e in found if e["type"] == "metrics"]
    lost = [e for e in found if e["data"] and "lost_writes" in e["data"]]
    assert lost and lost[0]["level"] == "warning"
    assert sum(e["data"]["lost_writes"] for e in lost) >= 4  # one metrics event per step


def test_an_outcome_that_cannot_be_recorded_hands_the_job_back_with_its_checkpoints(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    faults: Callable[[str, bool], None], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runner import execute_job

    monkeypatch.setattr(settings, "db_write_retry_s", 0.5)
    job_id, _ = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                           batch_size=8, max_steps=6, checkpoint_every_steps=3)
    # Given a database that refuses to mark the job succeeded
    faults("success", True)

    # When the job trains to the end
    status = execute_job(job_id, settings=settings)

    # Then it is not failed: it is queued again, its checkpoints kept, and no model registered
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert (status, job["status"], job["error"], job["result_model"]) == (
        None, "queued", None, None)
    assert list_checkpoints(workspace.work_dir(settings, job_id, 1))
    assert any("lost the database" in e["message"] for e in events(client, auth, job_id))
    models = client.get("/v1/models", headers=auth).json()["data"]
    assert [m for m in models if m.get("source_job") == job_id] == []
    # the export went back to the attempt's folder (the next attempt exports its own)
    assert list(workspace.output_dir(settings, job_id, 1).rglob("model.safetensors"))

    # and once the database accepts the write, the next attempt resumes and succeeds
    faults("success", False)
    assert execute_job(job_id, settings=settings) == "succeeded"
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert (job["status"], job["attempts"]) == ("succeeded", 2)
    assert any("Resumed from checkpoint" in e["message"] for e in events(client, auth, job_id))
