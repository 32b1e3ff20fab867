"""API helpers shared by the tests: keys, uploads, archives, error checks, queued messages."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import redis

from tests.factories.records import sentiment_records

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Jobs in tests are exported to torch only (the ONNX export costs seconds a job): the `settings`
# fixtures and `start_worker` set this; tests about runtimes, ONNX and its downloads turn it on.
NO_RUNTIME_EXPORT = {"DISTILL_EXPORT_RUNTIMES": "false"}


def upload_records(client: Any, auth: dict[str, str], rows: list[dict[str, Any]], *,
                   purpose: str = "train", name: str = "data.jsonl") -> str:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    response = client.post("/v1/files", headers=auth, data={"purpose": purpose},
                           files={"file": (name, body, "application/jsonl")})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# Archives of model folders, by folder and the (name, size, mtime) of every file in it: the same
# tiny teacher is uploaded hundreds of times in a run, and gzip of its 4 MB of weights costs a
# quarter of a second each time. A folder that changes gets a new archive.
_ARCHIVES: dict[tuple[str, tuple[tuple[str, int, int], ...]], bytes] = {}


def model_archive(model_dir: Path) -> bytes:
    """`model_dir` as a .tar.gz (one folder, `model/`), built once per content of the folder."""
    stats = [(p, p.stat()) for p in sorted(model_dir.rglob("*")) if p.is_file()]
    key = (str(model_dir.resolve()), tuple((str(p.relative_to(model_dir)), st.st_size,
                                            st.st_mtime_ns) for p, st in stats))
    if key not in _ARCHIVES:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(model_dir, arcname="model")
        _ARCHIVES[key] = buffer.getvalue()
    return _ARCHIVES[key]


def upload_model_dir(client: Any, auth: dict[str, str], model_dir: Path) -> dict[str, Any]:
    response = client.post("/v1/models", headers=auth,
                           files={"file": ("teacher.tar.gz", model_archive(model_dir),
                                           "application/gzip")})
    assert response.status_code == 201, response.text
    return dict(response.json())


def sentiment_files(client: Any, auth: dict[str, str], *, train: int = 64,
                    validation: int = 32) -> tuple[str, str]:
    train_id = upload_records(client, auth, sentiment_records(train, seed=1))
    val_id = upload_records(client, auth, sentiment_records(validation, seed=2),
                            purpose="validation", name="dev.jsonl")
    return train_id, val_id


def job_body(*, teacher: str, training_file: str, validation_file: str | None = None,
             **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "sequence-classification",
        "teacher": {"model": teacher},
        "student": {"architecture": {"num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                     "intermediate_size": 64}, "init": "teacher"},
        "training_file": training_file,
        "validation_file": validation_file,
        "data": {"text_column": "text", "label_column": "label", "max_seq_length": 32},
        "distillation": {"temperature": 2.0,
                         "losses": [{"type": "kl", "weight": 0.5}, {"type": "ce", "weight": 0.5}]},
        "hyperparameters": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "seed": 1},
    }
    body.update(overrides)
    return body


def make_key(settings: Any, tenant: str) -> dict[str, str]:
    from app.auth.service import create_key
    from app.kit.db import session_scope

    with session_scope(settings.sqlalchemy_url) as session:
        _, key = create_key(session=session, tenant_name=tenant)
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: Any, status: int, *, code: str | None = None, param: str | None = None
                 ) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param"}
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return dict(error)


def tar_gz(members: dict[str, bytes], *, links: dict[str, str] | None = None,
           hardlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for kind, table in ((tarfile.SYMTYPE, links), (tarfile.LNKTYPE, hardlinks)):
            for name, target in (table or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tar.addfile(info)
    return buffer.getvalue()


def dir_members(model_dir: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}


def upload_archive(client: Any, auth: dict[str, str], archive: bytes) -> Any:
    return client.post("/v1/models", headers=auth,
                       files={"file": ("teacher.tar.gz", archive, "application/gzip")})


def queued_messages(redis_db: int) -> int:
    return int(redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").llen("training"))


def download_model(client: Any, auth: dict[str, str], model_id: str, dest: Path) -> Path:
    """A model's download (`format=hf`), extracted into `dest` as a user would."""
    with client.stream("GET", f"/v1/models/{model_id}/download", headers=auth) as response:
        assert response.status_code == 200, response.read()
        data = b"".join(response.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest
