"""`GET /v1/models/{id}/download?format=hf|onnx|onnx-int8`: each archive, extracted, loads in its
runtime and answers alike; unknown formats and missing exports are 4xx naming `format`."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.factories.api import assert_error, dir_members, tar_gz
from tests.factories.api import upload_archive as upload

TEXTS = ["a moving, funny film", "a dull plot that goes on", "fine", "the worst acting of the year"]


@pytest.fixture(scope="module")
def exported_dir(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from distillation.export.onnx_export import export_onnx

    model_dir = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(tiny_teacher_dir, model_dir)
    export_onnx(model_dir)
    return model_dir


@pytest.fixture
def distilled(settings: Any, auth: dict[str, str], exported_dir: Path, tmp_path: Path) -> str:
    """A classifier with both ONNX exports, registered as the worker registers a job's student."""
    from app.auth.tables import TenantRow
    from app.kit.db import session_scope
    from app.models.service import register_distilled_model

    export = tmp_path / "export"
    shutil.copytree(exported_dir, export)
    with session_scope(settings.sqlalchemy_url) as session:
        tenant = session.query(TenantRow).one()
        row = register_distilled_model(
            session=session, tenant_id=tenant.id, job_id="job-1", model_dir=export,
            task="sequence-classification", parameters=1, size_bytes=1,
            labels=["negative", "positive"], report=None, settings=settings,
        )
    return str(row.id)


def download(client: Any, auth: dict[str, str], model_id: str, fmt: str | None, dest: Path
             ) -> tuple[Path, Any]:
    query = "" if fmt is None else f"?format={fmt}"
    with client.stream("GET", f"/v1/models/{model_id}/download{query}", headers=auth) as response:
        assert response.status_code == 200, response.read()
        data = b"".join(response.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest, response


def onnx_labels(folder: Path) -> tuple[list[str], np.ndarray]:
    """Labels and probabilities as a user runs the extracted folder: onnxruntime and its tokenizer."""
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    encoded = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="np")
    logits = session.run(None, {i.name: encoded[i.name] for i in session.get_inputs()})[0]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return [config.id2label[int(i)] for i in probs.argmax(-1)], probs


def test_each_format_loads_in_its_runtime(client: Any, auth: dict[str, str], distilled: str,
                                          tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf, response = download(client, auth, distilled, None, tmp_path / "hf")
    assert f'filename="{distilled}.tar.gz"' in response.headers["content-disposition"]
    assert download(client, auth, distilled, "hf", tmp_path / "hf2")[0].exists()
    assert {p.name for p in (tmp_path / "hf2").iterdir()} == {p.name for p in hf.iterdir()}
    # hf: today's archive, without the ONNX sub-directories
    assert (hf / "model.safetensors").is_file() and not list(hf.rglob("*.onnx"))
    assert not (hf / "onnx").exists() and not (hf / "onnx-int8").exists()
    model = AutoModelForSequenceClassification.from_pretrained(hf).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf)
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")).logits
    torch_probs = torch.softmax(logits, -1).numpy()
    torch_labels = [model.config.id2label[int(i)] for i in torch_probs.argmax(-1)]

    for fmt in ("onnx", "onnx-int8"):
        folder, response = download(client, auth, distilled, fmt, tmp_path / fmt)
        assert f'filename="{distilled}-{fmt}.tar.gz"' in response.headers["content-disposition"]
        # members at the archive root, as for hf; no torch weights
        assert {"model.onnx", "config.json", "tokenizer.json", "README.md"} <= {
            p.name for p in folder.iterdir()}
        assert not list(folder.rglob("*.safetensors"))
        labels, probs = onnx_labels(folder)
        assert labels == torch_labels
        tolerance = 1e-4 if fmt == "onnx" else 0.05
        assert np.abs(probs - torch_probs).max() < tolerance


def test_unknown_format_names_the_parameter(client: Any, auth: dict[str, str],
                                           distilled: str) -> None:
    for bad in ("safetensors", "ONNX", "onnx_int8", ""):
        assert_error(client.get(f"/v1/models/{distilled}/download?format={bad}", headers=auth),
                     422, param="format")


def test_a_model_without_onnx_export(client: Any, auth: dict[str, str],
                                     tiny_teacher_dir: Path) -> None:
    # An upload's own onnx/ folder and runtimes.json are not served: exports are the service's.
    members = dir_members(tiny_teacher_dir)
    members |= {"onnx/model.onnx": b"not a graph", "runtimes.json": b'{"default": "onnx"}'}
    model_id = upload(client, auth, tar_gz(members)).json()["id"]

    for fmt in ("onnx", "onnx-int8"):
        response = client.get(f"/v1/models/{model_id}/download?format={fmt}", headers=auth)
        assert_error(response, 400, param="format")
        assert f"no {fmt} export" in response.json()["error"]["message"]
        assert "downloaded as: hf." in response.json()["error"]["message"]
    builtin = client.get("/v1/models/all-minilm-l6-v2/download?format=onnx", headers=auth)
    assert_error(builtin, 400, param="format")
    with tarfile.open(fileobj=io.BytesIO(
            client.get(f"/v1/models/{model_id}/download", headers=auth).content)) as tar:
        assert "runtimes.json" not in tar.getnames() and "onnx/model.onnx" not in tar.getnames()


def test_predict_serves_each_exported_runtime(client: Any, auth: dict[str, str],
                                              distilled: str) -> None:
    url = f"/v1/models/{distilled}/predict"
    answers = {runtime: client.post(url, headers=auth, json={"inputs": TEXTS, "runtime": runtime})
               for runtime in ("torch", "onnx", "onnx-int8")}
    for runtime, response in answers.items():
        assert response.status_code == 200, response.text
        assert response.json()["runtime"] == runtime
    rows = {runtime: response.json()["data"] for runtime, response in answers.items()}
    assert [r["label"] for r in rows["onnx"]] == [r["label"] for r in rows["torch"]]
    for onnx, torch_row in zip(rows["onnx"], rows["torch"], strict=True):
        assert onnx["scores"] == pytest.approx(torch_row["scores"], abs=1e-4)
    assert [r["label"] for r in rows["onnx-int8"]] == [r["label"] for r in rows["torch"]]
