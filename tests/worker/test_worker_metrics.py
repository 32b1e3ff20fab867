"""A real worker with `DISTILL_WORKER_METRICS_PORT` set: after a job ran in one of its pool's child
processes, its main process serves that job's training metrics; and its log lines are JSON, each
line of the job naming the job, the attempt and the tenant."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.factories.server import free_port
from tests.factories.worker import FINAL, create_job, start_worker, stop_worker, wait_for


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`{(sample name, sorted labels): value}` of the worker's metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_serving(port: int, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError(f"no metrics on port {port}: {log.read_text(errors='replace')[-3000:]}")


def test_worker_serves_the_training_metrics_of_a_job_its_child_process_ran(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given a worker whose metrics are served on a port, with nothing run yet
    port, log = free_port(), tmp_path / "worker.log"
    proc = start_worker(settings, log=log, DISTILL_WORKER_METRICS_PORT=str(port),
                        DISTILL_RECONCILE_INTERVAL_S="3600")
    try:
        wait_serving(port, log)
        before = scrape(port)
        assert ("distill_worker_jobs_finished_total", (("outcome", "succeeded"),)) not in before

        # When a tiny job (10 steps of 4 examples) runs in one of the pool's child processes
        job_id, _teacher = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                                      batch_size=4, max_steps=10)
        job = wait_for(client, auth, job_id, FINAL, timeout=180)
        assert job["status"] == "succeeded", job
        report = client.get(f"/v1/models/{job['result_model']}", headers=auth).json()["report"]
        after = scrape(port)
    finally:
        stop_worker(proc)

    # Then the worker's port has the child's counts: the job, its steps and examples, and one
    # observation of each stage its report timed
    assert after[("distill_worker_jobs_finished_total", (("outcome", "succeeded"),))] == 1
    assert after[("distill_worker_job_seconds_count", (("outcome", "succeeded"),))] == 1
    steps = report["optimizer_steps"]
    assert steps == 10
    assert after[("distill_worker_training_steps_total", (("stage", "distill"),))] == steps
    assert after[("distill_worker_training_samples_total", ())] == steps * 4
    timed = {labels[0][1] for (name, labels), value in after.items()
             if name == "distill_worker_stage_seconds_count" and value == 1}
    assert timed == set(report["stage_seconds"]) and "distill" in timed
    distill_sum = after[("distill_worker_stage_seconds_sum", (("stage", "distill"),))]
    assert distill_sum == report["stage_seconds"]["distill"]
    # The job's process has exited: its live gauge no longer adds anything
    assert after.get(("distill_worker_training_samples_per_second", ()), 0.0) == 0.0

    # And its log is one JSON object a line; the job's lines name it, its attempt and its tenant
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("ready" in line["event"] for line in lines)
    of_job = [line for line in lines if line.get("job_id") == job_id]
    assert any(line.get("attempt") == 1 and line.get("tenant_id") for line in of_job), of_job
