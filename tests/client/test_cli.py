"""`distill files|jobs|models` against a live API (no worker: jobs stay queued until cancelled):
output, `--json`, exit codes, and the messages a user sees when something is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from distill_cli.main import cli
from tests.factories.api import job_body
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.server import ROOT, free_port

runner = CliRunner()


def run(env: dict[str, str], *args: str) -> Any:
    return runner.invoke(cli, list(args), env=env)


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _job_file(tmp_path: Path, training_file: str, **changes: Any) -> Path:
    body = job_body(teacher="all-minilm-l6-v2", training_file=training_file)
    body["teacher"]["finetune"] = {"epochs": 1}
    body["hyperparameters"].update(changes)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body))
    return path


def test_files_commands(cli_env: dict[str, str], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", sentiment_records(12, seed=1))
    uploaded = run(cli_env, "files", "upload", str(data), "--purpose", "train")
    assert uploaded.exit_code == 0, uploaded.output
    assert "12 records" in uploaded.stdout and "file-" in uploaded.stdout

    file = _json(run(cli_env, "files", "upload", str(data), "--purpose", "validation", "--json"))
    assert file["object"] == "file" and file["purpose"] == "validation"
    listed = _json(run(cli_env, "files", "list", "--json"))
    assert len(listed["data"]) == 2 and listed["object"] == "list"
    table = run(cli_env, "files", "list", "--purpose", "validation")
    assert file["id"] in table.stdout and "train.jsonl" in table.stdout
    assert _json(run(cli_env, "files", "get", file["id"], "--json"))["id"] == file["id"]
    shown = run(cli_env, "files", "get", file["id"])
    assert "validation" in shown.stdout and "text, label" in shown.stdout
    assert _json(run(cli_env, "files", "delete", file["id"], "--json"))["deleted"] is True

    gone = run(cli_env, "files", "get", file["id"])
    assert gone.exit_code == 1 and "Traceback" not in gone.output
    assert f"No file with id '{file['id']}'" in gone.stderr or "not_found" in gone.stderr


def test_jobs_commands_and_follow_of_a_cancelled_job(cli_env: dict[str, str], tmp_path: Path
                                                     ) -> None:
    train = _json(run(cli_env, "files", "upload",
                      str(write_jsonl(tmp_path / "t.jsonl", sentiment_records(12, seed=1))),
                      "--json"))
    created = run(cli_env, "jobs", "create", str(_job_file(tmp_path, train["id"])))
    assert created.exit_code == 0 and "(queued)" in created.stdout
    job_id = created.stdout.split()[1]

    assert _json(run(cli_env, "jobs", "list", "--json"))["data"][0]["id"] == job_id
    assert job_id in run(cli_env, "jobs", "list").stdout
    assert _json(run(cli_env, "jobs", "get", job_id, "--json"))["status"] == "queued"
    assert "queued" in run(cli_env, "jobs", "get", job_id).stdout
    assert _json(run(cli_env, "jobs", "cancel", job_id, "--json"))["status"] == "cancelled"
    events = _json(run(cli_env, "jobs", "events", job_id, "--json"))["data"]
    assert events and events[-1]["message"] in run(cli_env, "jobs", "events", job_id).stdout

    # Cancelling it again: the server's refusal, exit 1, no traceback
    again = run(cli_env, "jobs", "cancel", job_id)
    assert again.exit_code == 1 and "HTTP 409" in again.stderr and "Traceback" not in again.output

    # Following a cancelled job: it ends at once, non-zero
    followed = run(cli_env, "jobs", "follow", job_id)
    assert followed.exit_code == 1, followed.output
    assert f"{job_id} cancelled" in followed.stdout
    lines = run(cli_env, "jobs", "follow", job_id, "--json").stdout.splitlines()
    items = [json.loads(line) for line in lines]
    jobs = [i["data"] for i in items if i["type"] == "job"]
    assert items[0]["type"] == "job" and jobs[-1]["status"] == "cancelled"
    assert [i["data"]["id"] for i in items if i["type"] == "event"] == [e["id"] for e in events]


def test_models_commands(cli_env: dict[str, str], tiny_teacher_dir: Path, tmp_path: Path,
                         api_key: str, api: Any) -> None:
    from distill_client import Client
    from transformers import AutoModelForSequenceClassification

    with Client(api.url, api_key) as client:
        model_id = client.models.register(tiny_teacher_dir).id
    listed = _json(run(cli_env, "models", "list", "--json"))
    assert {m["id"] for m in listed["data"]} >= {model_id, "all-minilm-l6-v2"}
    assert model_id in run(cli_env, "models", "list").stdout
    assert "negative, positive" in run(cli_env, "models", "get", model_id).stdout

    predicted = run(cli_env, "models", "predict", model_id, "a fine film", "a dull film")
    assert predicted.exit_code == 0 and "a dull film" in predicted.stdout
    assert "positive" in predicted.stdout or "negative" in predicted.stdout
    data = _json(run(cli_env, "models", "predict", model_id, "ok", "--json"))["data"]
    assert data[0]["label"] in {"negative", "positive"}

    downloaded = run(cli_env, "models", "download", model_id, str(tmp_path / "m"))
    assert downloaded.exit_code == 0, downloaded.output
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").num_labels == 2
    again = run(cli_env, "models", "download", model_id, str(tmp_path / "m"))
    assert again.exit_code == 1 and "not an empty folder" in again.stderr

    builtin = run(cli_env, "models", "delete", "all-minilm-l6-v2")
    assert builtin.exit_code == 1 and "HTTP 409" in builtin.stderr
    assert _json(run(cli_env, "models", "delete", model_id, "--json"))["deleted"] is True


def test_bad_input_messages(cli_env: dict[str, str], tmp_path: Path) -> None:
    train = _json(run(cli_env, "files", "upload",
                      str(write_jsonl(tmp_path / "t.jsonl", sentiment_records(12, seed=1))),
                      "--json"))

    # A field out of range: the server's message and the field, exit 1
    bad = run(cli_env, "jobs", "create", str(_job_file(tmp_path, train["id"], epochs=0)))
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "field: hyperparameters.epochs" in bad.stderr and "HTTP 422" in bad.stderr

    # A malformed upload: the line
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": "x"}\n{"text": \n')
    refused = run(cli_env, "files", "upload", str(broken))
    assert refused.exit_code == 1 and "line 2" in refused.stderr and "field: file" in refused.stderr

    # JOB.json that is not JSON: the file and line, exit 2, nothing sent
    not_json = tmp_path / "job.json"
    not_json.write_text('{"task": \n')
    assert (r := run(cli_env, "jobs", "create", str(not_json))).exit_code == 2
    assert "not valid JSON" in r.stderr and "line 2" in r.stderr

    # No key: how to get one; a wrong key: 401; no server: the URL tried
    no_key = run({**cli_env, "DISTILL_API_KEY": ""}, "jobs", "list")
    assert no_key.exit_code == 4 and "distill keys create --tenant NAME" in no_key.stderr
    assert "DISTILL_API_KEY" in no_key.stderr
    wrong = run({**cli_env, "DISTILL_API_KEY": "dsk_wrong"}, "files", "list")
    assert wrong.exit_code == 1 and "invalid_api_key" in wrong.stderr
    port = free_port()
    down = run(cli_env, "files", "list", "--api-url", f"http://127.0.0.1:{port}")
    assert down.exit_code == 3 and "Traceback" not in down.output
    assert f"http://127.0.0.1:{port}/v1/files" in down.stderr


def test_the_distill_command_runs_the_client_commands(cli_env: dict[str, str]) -> None:
    """As a user runs it: `python -m distill_cli` (the `distill` script), env vars only."""
    out = subprocess.run([sys.executable, "-m", "distill_cli", "models", "list", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}",
                              **cli_env})
    assert out.returncode == 0, out.stderr
    assert any(m["id"] == "all-minilm-l6-v2" for m in json.loads(out.stdout)["data"])


def test_the_demo_finds_the_project_and_sst2_beside_it() -> None:
    # `make demo` reads ../shared/data/sst2 beside the checkout by default: the path is computed
    # from the command's own file, so a move of the package must not leave it one folder off
    from distill_cli.demo import DEFAULT_SST2, PROJECT_ROOT

    assert (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "distill_cli").is_dir()
    assert PROJECT_ROOT.parent / "shared" / "data" / "sst2" == DEFAULT_SST2
