"""A step's metrics are not a transaction each: with `log_every_steps: 1` the worker writes the
waiting metrics events together, at most once per `metrics_write_interval_s`, and loses none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.kit.db import engine_for
from tests.factories.worker import create_job

# Real transactions, seen by the database: a trigger notes the transaction of every metrics event.
TRACE = """
CREATE TABLE IF NOT EXISTS test_metrics_tx (tx bigint NOT NULL);
CREATE OR REPLACE FUNCTION test_note_metrics_tx() RETURNS trigger AS $$
BEGIN
  INSERT INTO test_metrics_tx VALUES (txid_current());
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER test_metrics_tx AFTER INSERT ON job_events FOR EACH ROW
  WHEN (NEW.type = 'metrics') EXECUTE FUNCTION test_note_metrics_tx();
"""
REMOVE = """
DROP TRIGGER IF EXISTS test_metrics_tx ON job_events;
DROP TABLE IF EXISTS test_metrics_tx;
"""


@pytest.fixture
def metrics_transactions(settings: Any) -> Iterator[Any]:
    engine = engine_for(settings.sqlalchemy_url)
    with engine.begin() as conn:
        conn.execute(text(REMOVE))
        conn.execute(text(TRACE))

    def count() -> tuple[int, int]:
        with engine.begin() as conn:
            return tuple(conn.execute(text(  # type: ignore[return-value]
                "SELECT count(*), count(DISTINCT tx) FROM test_metrics_tx")).one())

    yield count
    with engine.begin() as conn:
        conn.execute(text(REMOVE))


def test_step_metrics_are_written_in_batches_and_none_is_lost(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    metrics_transactions: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runner import execute_job

    # Given a job that logs every one of its 8 steps, and a long metrics write interval
    monkeypatch.setattr(settings, "metrics_write_interval_s", 3600.0)
    job_id, _ = create_job(client, auth, tiny_teacher_dir, train=64, validation=16,
                           batch_size=8, max_steps=8, log_every_steps=1)

    # When it runs
    assert execute_job(job_id, settings=settings) == "succeeded"

    # Then every step's event is there, in order
    events = client.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000",
                        headers=auth).json()["data"]
    steps = [e["data"]["step"] for e in events
             if e["type"] == "metrics" and "learning_rate" in e["data"]]
    assert steps == list(range(1, 9))
    # but written in a few transactions (the first step, then the batch before the
    # evaluation's), not one per step
    written, transactions = metrics_transactions()
    assert written >= 8
    assert transactions <= 4, f"{written} metrics events in {transactions} transactions"
