"""Jobs that run, on a live API and a real worker: `distill jobs create --follow` on a job that
succeeds (exit 0, stages, metrics, the report table) and one that fails (exit 1, its error);
the client follows a job live, and the student it downloads predicts as the served one does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from distill_client import Client, Job, JobEvent
from typer.testing import CliRunner

from distill_cli.main import cli
from tests.factories.api import job_body
from tests.factories.records import sentiment_records, write_jsonl

TEXTS = ["a gorgeous , witty movie .", "a dull , lifeless mess ."]


@pytest.fixture
def teacher(dc: Client, tiny_teacher_dir: Path) -> str:
    return dc.models.register(tiny_teacher_dir).id


def _job_file(dc: Client, tmp_path: Path, teacher: str) -> Path:
    train = dc.files.create(write_jsonl(tmp_path / "t.jsonl", sentiment_records(32, seed=1)))
    dev = dc.files.create(write_jsonl(tmp_path / "d.jsonl", sentiment_records(16, seed=2)),
                          purpose="validation")
    body = job_body(teacher=teacher, training_file=train.id, validation_file=dev.id)
    body["hyperparameters"].update(log_every_steps=1)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body))
    return path


def test_create_follow_a_job_that_succeeds(
    worker: subprocess.Popen[bytes], dc: Client, teacher: str, cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # When a user creates a job and follows it
    result = CliRunner().invoke(cli, ["jobs", "create", str(_job_file(dc, tmp_path, teacher)),
                                      "--follow"], env=cli_env)

    # Then it exits 0 after the stages, the metrics lines and the report table
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Created job-" in out and " succeeded" in out
    assert "distill" in out and "evaluate" in out  # stage bars
    assert "step 1: " in out and "train_loss=" in out  # metrics events, as they came
    assert "Teacher vs student" in out and "accuracy" in out and "parameters" in out
    print(out)


def test_create_follow_a_job_that_fails(
    worker: subprocess.Popen[bytes], dc: Client, teacher: str, cli_env: dict[str, str],
    tmp_path: Path, data_dir: Path,
) -> None:
    # Given a job whose teacher's weights are damaged on the server's disk after registration
    job_file = _job_file(dc, tmp_path, teacher)
    (weights,) = (p for p in data_dir.rglob("model.safetensors") if teacher in str(p))
    weights.write_bytes(b"\0" * 64)

    # When it is created and followed
    result = CliRunner().invoke(cli, ["jobs", "create", str(job_file), "--follow"], env=cli_env)

    # Then the follow ends non-zero with the job's error
    assert result.exit_code == 1, result.output
    assert " failed" in result.stdout and "training_failed" in result.stdout
    assert "Traceback (most recent call last)" not in result.output  # the server's event may say "Traceback"


def test_the_client_follows_a_job_live_and_loads_its_student(
    worker: subprocess.Popen[bytes], dc: Client, teacher: str, tmp_path: Path, api: Any,
    api_key: str,
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    body: dict[str, Any] = json.loads(_job_file(dc, tmp_path, teacher).read_text())
    job = dc.jobs.create(body)

    items = list(dc.jobs.stream(job.id))
    jobs = [i for i in items if isinstance(i, Job)]
    events = [i for i in items if isinstance(i, JobEvent)]
    assert jobs[-1].status == "succeeded" and jobs[-1].result_model
    assert jobs[0].status in {"queued", "running"}  # seen live, before it finished
    assert any(e.type == "metrics" and e.data and "train_loss" in e.data for e in events)
    assert [e.id for e in events] == [e.id for e in dc.jobs.events(job.id, limit=1000).data]

    # (The server streams: the client followed server-sent events, not the polling fallback.)
    with httpx.stream("GET", f"{api.url}/v1/distillation/jobs/{job.id}/events",
                      params={"stream": "true"}, headers={"Authorization": f"Bearer {api_key}"},
                      timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "event: end" in response.read().decode()

    final = dc.jobs.wait(job.id, timeout=60)
    model = dc.models.get(final.result_model or "")
    assert model.source_job == job.id and model.report and "student" in model.report

    # The downloaded student predicts what the served one predicts
    served = [p.label for p in dc.models.predict(model.id, TEXTS).data]
    folder = dc.models.download(model.id, tmp_path / "student")
    student = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokens = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ids = student(**tokens).logits.argmax(-1).tolist()
    assert [student.config.id2label[i] for i in ids] == served
