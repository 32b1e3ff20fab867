"""The API on an S3-compatible store: uploads and model directories go to the store, not to its
own folder; downloads and predictions come from the store; a model directory whose upload never
finished (no manifest) is never served."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any

from app.models.store import MANIFEST
from app.storage.object_store import open_store
from app.storage.trees import tree_files
from tests.factories.api import assert_error, upload_model_dir, upload_records
from tests.factories.records import sentiment_records


def test_uploads_and_models_live_in_the_store_and_download_and_predict_from_it(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
) -> None:
    store = open_store(settings)
    # Given a data set and a model uploaded to an API on an S3 store
    file_id = upload_records(client, auth, sentiment_records(8, seed=1))
    model = upload_model_dir(client, auth, tiny_teacher_dir)

    # Then both are objects in the store, and nothing of them is in the API's own folder
    assert list(store.list("files")) == [f"{file_id}.jsonl"]
    stored = store.list(f"models/{model['id']}")
    expected = {name: path.stat().st_size for name, path in tree_files(tiny_teacher_dir).items()}
    assert {k: v for k, v in stored.items() if k != MANIFEST} == expected
    assert not any(settings.resolved_data_dir.rglob("*.safetensors"))

    # When the model is downloaded, it is the directory that was uploaded, byte for byte
    response = client.get(f"/v1/models/{model['id']}/download", headers=auth)
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert members == {name: path.read_bytes()
                       for name, path in tree_files(tiny_teacher_dir).items()}

    # and it serves predictions (loaded from a copy in the API's scratch cache)
    answer = client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                         json={"inputs": ["a fine film", "a dull film"]})
    assert answer.status_code == 200, answer.text
    assert {d["label"] for d in answer.json()["data"]} <= {"negative", "positive"}
    assert any((settings.resolved_scratch_dir / "models" / model["id"]).rglob("config.json"))

    # and deleting them deletes their objects
    assert client.delete(f"/v1/files/{file_id}", headers=auth).status_code == 200
    assert client.delete(f"/v1/models/{model['id']}", headers=auth).status_code == 200
    assert store.list("files") == {} and store.list(f"models/{model['id']}") == {}


def test_a_model_directory_without_its_manifest_is_never_served(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
) -> None:
    from app.models import store as model_store

    # Given a model whose directory in the store lacks its manifest, the marker written last
    # (as a publisher that died before the end would leave it)
    model = upload_model_dir(client, auth, tiny_teacher_dir)
    store = open_store(settings)
    store.remove(f"models/{model['id']}/{MANIFEST}")
    model_store._manifests.clear()  # what the API remembered of it a moment ago

    # Then it is neither downloaded nor loaded for predictions, though its weights are there
    assert "model.safetensors" in store.list(f"models/{model['id']}")
    assert_error(client.get(f"/v1/models/{model['id']}/download", headers=auth), 404,
                 code="model_files_missing")
    assert_error(client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                             json={"inputs": ["a fine film"]}), 404, code="model_files_missing")


def test_the_dashboard_reads_a_stored_models_card(
    client: Any, auth: dict[str, str], tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given a model with a card, uploaded to an API on an S3 store
    model_dir = tmp_path / "with-card"
    shutil.copytree(tiny_teacher_dir, model_dir)
    (model_dir / "README.md").write_text("# A stored card\n")
    model = upload_model_dir(client, auth, model_dir)

    # When the dashboard asks for it, it is read through the store (no local folder has it)
    card = client.get(f"/ui/api/models/{model['id']}/card", headers=auth)

    assert card.status_code == 200, card.text
    assert card.json()["markdown"] == "# A stored card\n"
