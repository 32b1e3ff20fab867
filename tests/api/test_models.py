"""`/v1/models` on the real Postgres: built-ins, teacher uploads and what they refuse, downloads."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import assert_error, dir_members, tar_gz
from tests.factories.api import upload_archive as upload


def stored_models(settings: Any) -> list[str]:
    models_dir = settings.models_dir
    return sorted(p.name for p in models_dir.iterdir()) if models_dir.exists() else []


def test_list_contains_the_builtin_base_model(client: Any, auth: dict[str, str]) -> None:
    listing = client.get("/v1/models", headers=auth).json()

    assert listing["object"] == "list"
    minilm = next(m for m in listing["data"] if m["id"] == "all-minilm-l6-v2")
    assert (minilm["object"], minilm["owned_by"], minilm["source"]) == ("model", "system", "builtin")
    assert minilm["task"] == "feature-extraction"
    assert 22_000_000 < minilm["parameters"] < 23_000_000
    assert minilm["size_bytes"] > 80_000_000
    assert client.get("/v1/models/all-minilm-l6-v2", headers=auth).json() == minilm


@pytest.mark.parametrize("prefix", ["", "./", "teacher/"])
def test_upload_registers_a_teacher(client: Any, auth: dict[str, str], other_auth: dict[str, str],
                                    settings: Any, tiny_teacher_dir: Path, prefix: str) -> None:
    response = upload(client, auth, tar_gz(dir_members(tiny_teacher_dir, prefix)))

    assert response.status_code == 201, response.text
    model = response.json()
    assert model["id"].startswith("model-")
    assert (model["object"], model["source"], model["source_job"]) == ("model", "uploaded", None)
    assert model["task"] == "sequence-classification"
    assert model["labels"] == ["negative", "positive"]
    assert 900_000 < model["parameters"] < 1_200_000  # 30522 x 32 embeddings dominate
    assert model["filename"] == "teacher.tar.gz"
    assert stored_models(settings) == [model["id"]]
    assert (settings.models_dir / model["id"] / "config.json").is_file()
    assert client.get(f"/v1/models/{model['id']}", headers=auth).json() == model
    assert model["id"] in [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    # Another tenant: not listed, 404 like a missing id.
    assert model["id"] not in [m["id"] for m in
                               client.get("/v1/models", headers=other_auth).json()["data"]]
    assert_error(client.get(f"/v1/models/{model['id']}", headers=other_auth), 404)
    assert_error(client.delete(f"/v1/models/{model['id']}", headers=other_auth), 404)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"pytorch_model.bin": b"pickle"}, "pytorch_model.bin"),
        ({"weights.pt": b"pickle"}, "weights.pt"),
        ({"modeling_evil.py": b"import os"}, "modeling_evil.py"),
        ({"config.json": json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "x.Y"},
                                     "architectures": ["BertModel"]}).encode()}, "auto_map"),
        ({"../evil": b"x"}, ".."),
        ({"/etc/evil": b"x"}, "absolute"),
        ({"config.json": None}, "config.json"),
        ({"model.safetensors": None}, "safetensors"),
        ({"model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}"}, "safetensors"),
    ],
)
def test_unsafe_or_incomplete_archives_are_refused(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
    change: dict[str, bytes | None], needle: str,
) -> None:
    members = dir_members(tiny_teacher_dir)
    for name, data in change.items():
        if data is None:
            members.pop(name)
        else:
            members[name] = data

    error = assert_error(upload(client, auth, tar_gz(members)), 400,
                         code="invalid_model_archive", param="file")

    assert needle in error["message"]
    assert stored_models(settings) == []
    assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]] == [
        "all-minilm-l6-v2", "smollm2-135m-instruct"
    ]


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_links_are_refused(client: Any, auth: dict[str, str], settings: Any,
                           tiny_teacher_dir: Path, kind: str) -> None:
    links = {"tokenizer.json": "/etc/passwd"}
    archive = tar_gz(dir_members(tiny_teacher_dir),
                     links=links if kind == "symlink" else None,
                     hardlinks=links if kind == "hardlink" else None)

    assert_error(upload(client, auth, archive), 400, code="invalid_model_archive")
    assert stored_models(settings) == []


def test_not_an_archive_and_too_large(client: Any, auth: dict[str, str], settings: Any,
                                      tiny_teacher_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import get_settings

    assert_error(upload(client, auth, b"not a tarball"), 400, code="invalid_model_archive")
    monkeypatch.setenv("DISTILL_MAX_MODEL_UPLOAD_BYTES", "10000")
    get_settings.cache_clear()
    assert_error(upload(client, auth, tar_gz(dir_members(tiny_teacher_dir))), 413, param="file")
    assert stored_models(settings) == []


def test_download_loads_with_transformers(client: Any, auth: dict[str, str], tmp_path: Path,
                                          tiny_teacher_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model_id = upload(client, auth, tar_gz(dir_members(tiny_teacher_dir, "x/"))).json()["id"]

    response = client.get(f"/v1/models/{model_id}/download", headers=auth)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    assert f'filename="{model_id}.tar.gz"' in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "out", filter="data")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_builtin_download_streams_the_directory(client: Any, auth: dict[str, str]) -> None:
    with client.stream("GET", "/v1/models/all-minilm-l6-v2/download", headers=auth) as response:
        assert response.status_code == 200
        data = b"".join(response.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(names)


def test_delete(client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path) -> None:
    model_id = upload(client, auth, tar_gz(dir_members(tiny_teacher_dir))).json()["id"]

    builtin = client.delete("/v1/models/all-minilm-l6-v2", headers=auth)
    deleted = client.delete(f"/v1/models/{model_id}", headers=auth)

    assert_error(builtin, 409)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": model_id, "object": "model", "deleted": True}
    assert_error(client.get(f"/v1/models/{model_id}", headers=auth), 404)
    assert_error(client.get(f"/v1/models/{model_id}/download", headers=auth), 404)
    assert stored_models(settings) == []


def test_resolve_model_ref(client: Any, auth: dict[str, str], other_auth: dict[str, str],
                           settings: Any, tiny_teacher_dir: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    from app.kit.db import session_scope
    from app.kit.errors import InvalidRequest
    from app.models.service import resolve_model_ref
    from app.models.tables import ModelRow
    from app.settings import get_settings

    model_id = upload(client, auth, tar_gz(dir_members(tiny_teacher_dir))).json()["id"]
    with session_scope(settings.sqlalchemy_url) as session:
        tenant_id = session.get(ModelRow, model_id).tenant_id  # type: ignore[union-attr]

        mine = resolve_model_ref(session=session, tenant_id=tenant_id, settings=settings,
                                 ref=model_id, param="teacher.model")
        builtin = resolve_model_ref(session=session, tenant_id=tenant_id, settings=settings,
                                    ref="all-minilm-l6-v2", param="teacher.model")
        for ref, tenant in ((model_id, "tenant-other"), (str(tiny_teacher_dir), tenant_id)):
            with pytest.raises(InvalidRequest) as caught:
                resolve_model_ref(session=session, tenant_id=tenant, settings=settings,
                                  ref=ref, param="student.model")
            assert (caught.value.code, caught.value.param) == ("model_not_found", "student.model")

        monkeypatch.setenv("DISTILL_ALLOW_LOCAL_MODEL_PATHS", "true")
        get_settings.cache_clear()
        local = resolve_model_ref(session=session, tenant_id=tenant_id, settings=get_settings(),
                                  ref=str(tiny_teacher_dir), param="teacher.model")

    assert (mine.model_id, mine.info.task, mine.path) == (
        model_id, "sequence-classification", settings.models_dir / model_id)
    assert (builtin.model_id, builtin.info.task) == ("all-minilm-l6-v2", "feature-extraction")
    assert (local.model_id, local.path, local.info.labels) == (
        None, tiny_teacher_dir.resolve(), ["negative", "positive"])


def test_register_distilled_model(settings: Any, auth: dict[str, str], tiny_teacher_dir: Path,
                                  tmp_path: Path) -> None:
    import shutil

    from app.auth.tables import TenantRow
    from app.kit.db import session_scope
    from app.models.service import register_distilled_model

    export = tmp_path / "export"
    shutil.copytree(tiny_teacher_dir, export)
    with session_scope(settings.sqlalchemy_url) as session:
        tenant = session.query(TenantRow).one()
        row = register_distilled_model(
            session=session, tenant_id=tenant.id, job_id="job-1", model_dir=export,
            task="sequence-classification", parameters=123, size_bytes=456,
            labels=["negative", "positive"], report={"retention": 0.9}, settings=settings,
        )

    assert not export.exists()
    assert (settings.models_dir / row.id / "config.json").is_file()
    assert (row.source, row.source_job, row.report) == ("distilled", "job-1", {"retention": 0.9})
