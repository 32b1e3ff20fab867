"""Workers and queue classes end to end: a real `distill worker` told its memory consumes the
classes it is as big as, registers what it holds in Postgres, runs a job routed to one of them,
and leaves the registry when it stops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.jobs.queue_classes import parse_queues, queues_for_worker
from app.kit.db import session_scope
from app.workers.registry import list_workers
from tests.factories.worker import create_job, start_worker, stop_worker, wait_for

QUEUES = "small=64MiB,large=64GiB,pair=64MiBx2"


def registered(settings: Any) -> list[Any]:
    with session_scope(settings.sqlalchemy_url) as session:
        return [(row.device, row.device_count, row.memory_bytes, row.queues, alive)
                for row, alive in list_workers(session, alive_within_s=60)]


def test_a_small_worker_consumes_its_classes_registers_and_runs_a_routed_job(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path, monkeypatch: Any,
) -> None:
    # Given the API and a worker that both know three classes, the worker with 1 GiB, 1 device
    monkeypatch.setenv("DISTILL_WORKER_QUEUES", QUEUES)
    from app.settings import get_settings

    get_settings.cache_clear()
    proc = start_worker(settings, DISTILL_RECONCILE_INTERVAL_S="3600",
                        DISTILL_WORKER_QUEUES=QUEUES, DISTILL_WORKER_MEMORY="1GiB",
                        DISTILL_WORKER_DEVICES="1", DISTILL_WORKER_DEVICE="cpu")
    try:
        # Then it registers with what it holds, consuming `small` only
        deadline = time.monotonic() + 120
        while not registered(settings) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert registered(settings) == [("cpu", 1, 1024**3, ["small"], True)]

        # and a job routed to `small` runs on it
        job_id, _ = create_job(client, auth, tiny_teacher_dir)
        shown = client.get(f"/v1/distillation/jobs/{job_id}", headers=auth).json()
        assert shown["resources"]["queue"] == "small"
        assert wait_for(client, auth, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    finally:
        stop_worker(proc)
    # When it stops, it leaves the registry
    assert registered(settings) == []


def test_a_worker_consumes_every_class_it_is_as_big_as() -> None:
    classes = parse_queues(QUEUES)
    assert [q.name for q in classes] == ["small", "pair", "large"]
    assert queues_for_worker(classes, memory_bytes=80 * 1024**3, devices=2) == \
        ["small", "pair", "large"]
    assert queues_for_worker(classes, memory_bytes=80 * 1024**3, devices=1) == ["small", "large"]
    assert queues_for_worker(classes, memory_bytes=32 * 1024**2, devices=4) == []
