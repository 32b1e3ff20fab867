"""Every write of a worker is fenced by its attempt: a worker whose job was taken over has its
late writes refused and stops, its error path leaves the new owner's files alone, and two
workers racing for one queued job train it once. Two workers run here as two threads of the test
process calling `execute_job` (each claim is a worker id of its own) on the real database, so
the moment of the takeover is exact."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.jobs import lifecycle, workspace
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from distillation.layout import list_checkpoints
from tests.factories.faults import job_events, started_attempts, trained_steps
from tests.factories.worker import create_job, reconcile_now


def job_row(settings: Any, job_id: str) -> tuple[str, int, str | None]:
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.execute(select(JobRow.status, JobRow.attempts, JobRow.worker_id)
                              .where(JobRow.id == job_id)).one()
    return row.status, row.attempts, row.worker_id


def requeue_as_if_silent(settings: Any, job_id: str) -> None:
    """The reconciler's view of a worker that stopped answering: its job goes back to the queue."""
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(update(JobRow).where(JobRow.id == job_id)
                        .values(heartbeat_at=JobRow.heartbeat_at - 3600))
    assert reconcile_now(settings)["queued"] == [job_id]


def checkpoint_steps(work: Path) -> list[int]:
    return [meta["step"] for _, meta in list_checkpoints(work)]


def models_of(client: Any, auth: dict[str, str], job_id: str) -> list[str]:
    return [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]
            if m.get("source_job") == job_id]


class Takeover:
    """Runs worker A (the test's thread) and, when A reports the metrics of `at_step`, takes the
    job from it: the reconciler re-queues it and worker B (a thread) claims it as attempt 2.
    `then(reporter, step, data)` is what A does next; B finishes only once A has returned."""

    def __init__(self, settings: Any, job_id: str, monkeypatch: pytest.MonkeyPatch,
                 *, at_step: int, then: Any) -> None:
        import worker.runner as runner

        self.settings, self.job_id, self.at_step, self.then = settings, job_id, at_step, then
        # No heartbeat thread in the way: A learns of the takeover from its refused write.
        monkeypatch.setattr(settings, "heartbeat_interval_s", 3600.0)
        self.a_returned = threading.Event()
        self.b_result: list[str | None] = []
        self.b_thread: threading.Thread | None = None
        self._real_run_job = runner.run_job
        self._calls = 0
        monkeypatch.setattr(runner, "run_job", self._run_job)

    def _run_job(self, config: Any, reporter: Any) -> Any:
        self._calls += 1
        if self._calls == 1:  # worker A
            return self._real_run_job(config, _Intercept(reporter, self))
        result = self._real_run_job(config, reporter)  # worker B, up to its export
        assert self.a_returned.wait(timeout=120)
        return result

    def take_over(self) -> None:
        from worker.runner import execute_job

        requeue_as_if_silent(self.settings, self.job_id)
        self.b_thread = threading.Thread(target=lambda: self.b_result.append(
            execute_job(self.job_id, settings=self.settings)), daemon=True)
        self.b_thread.start()
        deadline = time.monotonic() + 60
        while job_row(self.settings, self.job_id)[:2] != ("running", 2):
            assert time.monotonic() < deadline, "worker B never claimed the job"
            time.sleep(0.05)

    def run_a(self) -> str | None:
        from worker.runner import execute_job

        try:
            return execute_job(self.job_id, settings=self.settings)
        finally:
            self.a_returned.set()

    def b_status(self) -> str | None:
        assert self.b_thread is not None
        self.b_thread.join(timeout=300)
        return self.b_result[0]


class _Intercept:
    """Worker A's reporter, with the takeover hooked in front of the metrics of one step."""

    def __init__(self, inner: Any, takeover: Takeover) -> None:
        self.inner, self.takeover = inner, takeover

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def metrics(self, step: int, data: dict[str, Any]) -> None:
        if step == self.takeover.at_step and "learning_rate" in data:
            self.takeover.take_over()
            return self.takeover.then(self.inner, step, data)
        return self.inner.metrics(step, data)


def test_a_worker_whose_job_was_taken_over_has_its_late_writes_refused_and_stops(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given worker A training a job of 8 steps that checkpoints every step
    job_id, _ = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                           batch_size=8, max_steps=8, log_every_steps=1,
                           checkpoint_every_steps=1)

    # When, as A is about to record step 3, the job is re-queued and worker B claims it, and A
    # then writes the metrics of its step 3
    takeover = Takeover(settings, job_id, monkeypatch, at_step=3,
                        then=lambda reporter, step, data: reporter.metrics(step, data))
    a_status = takeover.run_a()

    # Then A's write was refused and A stopped there: nothing recorded, no checkpoint of step 3
    # written, while B goes on from A's checkpoint of step 2 in a folder of its own
    assert a_status is None
    assert job_row(settings, job_id)[:2] == ("running", 2)
    assert checkpoint_steps(workspace.work_dir(settings, job_id, 1)) == [2, 1]
    assert checkpoint_steps(workspace.work_dir(settings, job_id, 2))

    # and B finishes the job: one run after the takeover, every step recorded once
    assert takeover.b_status() == "succeeded"
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert (job["status"], job["attempts"], job["error"]) == ("succeeded", 2, None)
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    assert started_attempts(events) == 2
    assert trained_steps(events) == list(range(1, 9))
    resumed = [e["data"]["resumed_from_step"] for e in events
               if e["data"] and "resumed_from_step" in e["data"]]
    assert resumed == [2]
    assert len(models_of(client, auth, job_id)) == 1


def test_the_error_path_of_a_worker_that_lost_its_job_leaves_the_new_owners_files(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given worker A training a job that checkpoints every step
    job_id, _ = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                           batch_size=8, max_steps=8, log_every_steps=1,
                           checkpoint_every_steps=1)

    def crash(reporter: Any, step: int, data: dict[str, Any]) -> None:
        raise OSError("No space left on device")

    # When the job is taken over by worker B and A then fails on an error of its own
    takeover = Takeover(settings, job_id, monkeypatch, at_step=3, then=crash)
    a_status = takeover.run_a()

    # Then A records nothing (no failure, no traceback) and deletes none of the job's files:
    # the checkpoints B resumed from and B's own are where they were
    assert a_status is None
    assert job_row(settings, job_id)[:2] == ("running", 2)
    job_dir = settings.jobs_dir / job_id
    assert list(job_dir.rglob("checkpoint.json")), "the job's checkpoints were deleted"
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    assert not [e for e in events if e["level"] == "error"], events

    # and B's run, untouched, succeeds
    assert takeover.b_status() == "succeeded"
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert (job["status"], job["attempts"], job["error"]) == ("succeeded", 2, None)
    assert len(models_of(client, auth, job_id)) == 1
    assert not job_dir.exists()  # removed by the owner once the job finished for good


def test_two_workers_racing_for_one_queued_job_train_it_once(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runner import execute_job

    job_id, _ = create_job(client, auth, tiny_teacher_dir, train=32, validation=16, max_steps=3)
    # Given two workers that reach their claim of the queued job at the same moment
    real_claim = lifecycle.claim
    barrier = threading.Barrier(2)

    def claim_together(session: Any, **kwargs: Any) -> Any:
        barrier.wait(timeout=60)
        return real_claim(session, **kwargs)

    monkeypatch.setattr(lifecycle, "claim", claim_together)

    # When both run it
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(
        execute_job(job_id, settings=settings))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    # Then one trained it and the other found it taken
    assert sorted(results, key=str) == [None, "succeeded"]
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    assert started_attempts(events) == 1
    assert len(models_of(client, auth, job_id)) == 1
