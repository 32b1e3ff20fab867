"""A job that fails tells its tenant what went wrong (the exception's type and message) and keeps
the traceback, with the server's code and paths, in the server's log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.factories.worker import create_job


def test_a_failed_job_shows_the_error_but_never_the_servers_traceback(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from worker.runner import execute_job

    # Given a job whose teacher's weights are damaged on the server's disk after registration
    job_id, teacher = create_job(client, auth, tiny_teacher_dir)
    (weights,) = (p for p in Path(settings.data_dir).rglob("model.safetensors")
                  if teacher in str(p))
    weights.write_bytes(b"\0" * 64)

    # When a worker runs it
    with caplog.at_level(logging.ERROR, logger="worker.runner"):
        assert execute_job(job_id, settings=settings) == "failed"

    # Then the tenant sees the exception's type and message, and no traceback anywhere
    job = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
    assert job["error"]["code"] == "training_failed"
    events = client.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000",
                        headers=auth).json()["data"]
    failed = [e for e in events if e["message"].startswith("Job failed: ")]
    assert len(failed) == 1 and job["error"]["message"] in failed[0]["message"]
    shown = repr(events) + repr(job)
    assert "Traceback" not in shown and "traceback" not in shown and 'File "' not in shown
    # while the server's log keeps it
    assert any(r.exc_info is not None and r.getMessage() == f"job {job_id} failed"
               for r in caplog.records)
