"""`distill_client` against a live API: every method round-trips, errors carry the contract's
code, message and field, downloads stream to disk and load with `from_pretrained`."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from distill_client import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    FileObject,
    Job,
    JobEvent,
    MissingAPIKeyError,
    NotFoundError,
    UnprocessableEntityError,
    UnsafeArchiveError,
)
from distill_client._archive import prepare_destination, staging_dir, unpack

from tests.factories.api import job_body, tar_gz
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.server import ROOT, free_port


def _train_file(dc: Client, tmp_path: Path, rows: int = 16) -> FileObject:
    return dc.files.create(write_jsonl(tmp_path / "train.jsonl", sentiment_records(rows, seed=1)),
                           purpose="train")


def _body(training_file: str, teacher: str = "all-minilm-l6-v2") -> dict[str, Any]:
    """A job on the built-in MiniLM (a base model: it is fine-tuned first)."""
    body = job_body(teacher=teacher, training_file=training_file)
    body["teacher"]["finetune"] = {"epochs": 1}
    return body


def test_files_round_trip(dc: Client, tmp_path: Path) -> None:
    # Given a file uploaded from a path and one from bytes
    first = _train_file(dc, tmp_path)
    second = dc.files.create(("dev.jsonl", b'{"text": "fine", "label": "positive"}\n'),
                             purpose="validation")
    assert (first.purpose, first.num_records, first.format) == ("train", 16, "jsonl")
    assert first.id.startswith("file-") and "text" in first.columns

    # Then list (newest first, filtered), get and delete round-trip
    assert [f.id for f in dc.files.list().data] == [second.id, first.id]
    assert [f.id for f in dc.files.list(purpose="validation").data] == [second.id]
    assert dc.files.list(limit=1).has_more
    assert dc.files.get(first.id) == first
    assert dc.files.delete(first.id).deleted
    with pytest.raises(NotFoundError) as missing:
        dc.files.get(first.id)
    assert (missing.value.status_code, missing.value.code) == (404, "not_found")


def test_list_calls_iterate_every_item_across_pages(dc: Client, tmp_path: Path) -> None:
    # Given five files, listed two to a page
    ids = [dc.files.create((f"f{i}.jsonl", b'{"text": "fine", "label": "positive"}\n'),
                           purpose="validation").id for i in range(5)]
    page = dc.files.list(limit=2)

    # Then the page is sized by its own items, and iterating it yields all five, newest first,
    # fetching the later pages as it goes (as `for m in client.models.list()` does in OpenAI's SDK)
    assert len(page) == 2 and page.has_more
    assert [f.id for f in page] == ids[::-1]
    assert [len(p) for p in page.iter_pages()] == [2, 2, 1]
    # And a list call that is one page iterates its items, not the page's fields
    models = dc.models.list()
    assert [m.id for m in models] == [m.id for m in models.data] and len(models) >= 1


def test_a_malformed_upload_names_the_line_and_the_field(dc: Client) -> None:
    with pytest.raises(BadRequestError) as refused:
        dc.files.create(("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": \n'))
    assert refused.value.param == "file" and "line 2" in refused.value.message
    assert refused.value.body["error"]["code"] == refused.value.code


def test_jobs_round_trip_and_follow_by_polling(dc: Client, tmp_path: Path) -> None:
    # Given a job (no worker runs in this module: it stays queued)
    train = _train_file(dc, tmp_path)
    job = dc.jobs.create(_body(train.id))
    assert isinstance(job, Job) and job.status == "queued" and job.training_file == train.id
    assert job.model_extra is not None and "attempts" in job.model_extra  # unknown fields kept

    # Then list, get, events and checkpoints answer
    assert [j.id for j in dc.jobs.list().data] == [job.id]
    assert dc.jobs.list(status="running").data == []
    assert dc.jobs.get(job.id).id == job.id
    assert dc.jobs.checkpoints(job.id).data == []
    events = dc.jobs.events(job.id).data

    # When it is cancelled: cancelled at once, a second cancel is a conflict
    assert dc.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(ConflictError) as conflict:
        dc.jobs.cancel(job.id)
    assert conflict.value.status_code == 409 and conflict.value.message

    # Then wait returns the final job and stream yields it with every event, then ends
    assert dc.jobs.wait(job.id, timeout=30).status == "cancelled"
    items = list(dc.jobs.stream(job.id, poll=0.2))
    jobs = [i for i in items if isinstance(i, Job)]
    streamed = [i for i in items if isinstance(i, JobEvent)]
    assert isinstance(items[0], Job) and jobs[-1].status == "cancelled"
    assert [e.id for e in streamed] == [e.id for e in dc.jobs.events(job.id).data]
    assert len(streamed) > len(events)  # the cancel wrote an event
    after = dc.jobs.events(job.id, after=streamed[0].id).data
    assert [e.id for e in after] == [e.id for e in streamed[1:]]


def test_create_is_idempotent_by_key(dc: Client, tmp_path: Path) -> None:
    train = _train_file(dc, tmp_path)
    body = _body(train.id)
    same = [dc.jobs.create(body, idempotency_key="run-1").id for _ in range(2)]
    assert same[0] == same[1]
    assert dc.jobs.create(body).id != dc.jobs.create(body).id  # a fresh key per call
    with pytest.raises(ConflictError) as reused:
        dc.jobs.create({**body, "metadata": {"x": "y"}}, idempotency_key="run-1")
    assert (reused.value.code, reused.value.param) == ("idempotency_key_reused", "Idempotency-Key")


def test_validation_errors_name_the_field(dc: Client, tmp_path: Path) -> None:
    train = _train_file(dc, tmp_path)
    body = _body(train.id)
    body["hyperparameters"]["epochs"] = 0
    with pytest.raises(UnprocessableEntityError) as invalid:
        dc.jobs.create(body)
    assert invalid.value.param == "hyperparameters.epochs" and invalid.value.code
    with pytest.raises(BadRequestError) as unknown:
        dc.jobs.create(_body(train.id, teacher="no-such-model"))
    assert (unknown.value.code, unknown.value.param) == ("model_not_found", "teacher.model")
    assert dc.jobs.list().data == []


def test_models_register_get_predict_delete(dc: Client, tiny_teacher_dir: Path) -> None:
    model = dc.models.register(tiny_teacher_dir)  # a folder: packed by the client
    assert model.id.startswith("model-") and model.labels == ["negative", "positive"]
    ids = [m.id for m in dc.models.list().data]
    assert model.id in ids and "all-minilm-l6-v2" in ids
    assert dc.models.get(model.id).parameters == model.parameters

    predictions = dc.models.predict(model.id, ["a fine film", ["a", "pair"]])
    assert len(predictions.data) == 2
    for p in predictions.data:
        assert p.label in {"negative", "positive"} and p.scores is not None
        assert p.score == pytest.approx(max(p.scores.values()))
    with pytest.raises(UnprocessableEntityError) as bad:
        dc.models.predict(model.id, ["x"], max_new_tokens=0)
    assert bad.value.param == "max_new_tokens"

    with pytest.raises(ConflictError):
        dc.models.delete("all-minilm-l6-v2")
    assert dc.models.delete(model.id).deleted
    with pytest.raises(NotFoundError):
        dc.models.get(model.id)


def test_download_streams_to_disk_and_loads(dc: Client, tiny_teacher_dir: Path,
                                            tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = dc.models.register(tiny_teacher_dir)
    archive_bytes = (tiny_teacher_dir / "model.safetensors").stat().st_size

    # When it is downloaded while Python's allocations are traced
    tracemalloc.start()
    try:
        folder = dc.models.download(model.id, tmp_path / "student")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Then the client never held the archive (MBs) in memory, and the folder loads
    assert peak < archive_bytes / 4, (peak, archive_bytes)
    assert folder == (tmp_path / "student").resolve()
    loaded = AutoModelForSequenceClassification.from_pretrained(folder)
    assert loaded.config.id2label == {0: "negative", 1: "positive"}
    assert [p.name for p in tmp_path.iterdir()] == ["student"]  # no scratch left beside it

    # And a folder with files in it is refused before anything is downloaded
    with pytest.raises(FileExistsError):
        dc.models.download(model.id, tmp_path / "student")


@pytest.mark.parametrize("members,links", [
    ({"config.json": b"{}"}, {"evil": "/etc/passwd"}),
    ({"config.json": b"{}", "../escape.txt": b"x"}, None),
    ({"/abs.txt": b"x"}, None),
])
def test_unpacking_refuses_links_and_escaping_paths(tmp_path: Path, members: dict[str, bytes],
                                                    links: dict[str, str] | None) -> None:
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(tar_gz(members, links=links))
    dest = tmp_path / "out"
    prepare_destination(dest)
    with pytest.raises(UnsafeArchiveError), staging_dir(dest) as scratch:
        unpack(archive, dest, scratch)
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar.gz"]


def test_a_plain_archive_unpacks(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        source = tmp_path / "m"
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"model_type": "bert"}))
        tar.add(source, arcname="model")
    dest = tmp_path / "out"
    prepare_destination(dest)
    with staging_dir(dest) as scratch:
        assert unpack(archive, dest, scratch) == dest / "model"


def test_auth_and_connection_errors(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(api.url, "dsk_not_a_key") as bad, pytest.raises(AuthenticationError) as refused:
        bad.files.list()
    assert (refused.value.status_code, refused.value.code) == (401, "invalid_api_key")

    monkeypatch.delenv("DISTILL_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="distill keys create --tenant NAME"):
        Client(api.url)

    port = free_port()  # nothing listens there
    with Client(f"http://127.0.0.1:{port}", "k", max_retries=1) as down, \
            pytest.raises(APIConnectionError) as unreachable:
        down.jobs.get("job-x")
    assert unreachable.value.url == f"http://127.0.0.1:{port}/v1/distillation/jobs/job-x"
    assert f"127.0.0.1:{port}" in str(unreachable.value)


def test_the_client_imports_no_torch_transformers_or_server_code() -> None:
    code = ("import sys, distill_client, distill_client.client; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'app', 'worker', 'distillation', 'fastapi', "
            "'sqlalchemy', 'celery'}); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "client", check=True,
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stderr


def test_the_client_builds_as_a_wheel_of_its_own(tmp_path: Path) -> None:
    import shutil
    import zipfile

    source = shutil.copytree(ROOT / "client", tmp_path / "src")  # the build writes beside it
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(source)], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("distill_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "distill_client/py.typed" in names and "distill_client/client.py" in names
    assert not any(n.startswith(("app/", "worker/", "distillation/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist")]
    assert any("httpx" in r for r in requires)
    assert not any(dep in r for r in requires for dep in ("torch", "transformers", "fastapi"))
