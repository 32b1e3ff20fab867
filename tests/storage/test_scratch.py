"""The scratch cache of an API on an S3 store: a deleted file or model leaves no local copy
behind, and the copies pulled from the store stay under `DISTILL_SCRATCH_MAX_BYTES`, the least
recently used going first."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from app.models import store as model_store
from app.storage.object_store import open_store
from app.storage.scratch import local_file
from tests.factories.api import upload_model_dir, upload_records
from tests.factories.records import sentiment_records


def _scratch_bytes(settings: Any) -> int:
    root = settings.resolved_scratch_dir
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def test_deleting_a_file_or_model_deletes_its_scratch_copies(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
) -> None:
    store = open_store(settings)
    # Given a data set and a model on the store, each with local copies in the API's scratch
    file_id = upload_records(client, auth, sentiment_records(8, seed=1))
    model = upload_model_dir(client, auth, tiny_teacher_dir)
    file_copy = local_file(settings, store.url(f"files/{file_id}.jsonl"))
    answer = client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                         json={"inputs": ["a fine film"]})
    assert answer.status_code == 200, answer.text
    card = client.get(f"/ui/api/models/{model['id']}/card", headers=auth)  # a copy sans weights
    assert card.status_code == 200, card.text
    model_copies = settings.resolved_scratch_dir / "models" / model["id"]
    assert file_copy.is_file() and len(list(model_copies.iterdir())) == 2

    # When both are deleted
    assert client.delete(f"/v1/files/{file_id}", headers=auth).status_code == 200
    assert client.delete(f"/v1/models/{model['id']}", headers=auth).status_code == 200

    # Then no copy of either is left on this machine
    assert not file_copy.exists()
    assert not model_copies.exists()


def test_a_model_deleted_elsewhere_drops_its_copy_on_its_next_use(settings: Any) -> None:
    store = open_store(settings)
    _put_model(store, "model-gone", 100)
    location = store.url("models/model-gone")
    copy = model_store.local_model_dir(settings, location)
    # Given another process deleted the model from the store
    store.remove_prefix("models/model-gone")
    model_store._manifests.clear()

    # When this process asks for it, it is missing, and its copy goes too
    try:
        model_store.local_model_dir(settings, location)
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("a deleted model was served from its copy")
    assert not copy.parent.exists()


def _put_model(store: Any, model_id: str, size: int) -> None:
    store.put_bytes(f"models/{model_id}/model.safetensors", b"w" * size)
    store.put_bytes(f"models/{model_id}/{model_store.MANIFEST}", json.dumps(
        {"files": {"model.safetensors": size}}).encode())


def test_the_scratch_cache_stays_under_its_bound_evicting_the_least_recently_used(
    settings: Any,
) -> None:
    # Given a scratch cache of 5,000 bytes, and 12 uploads and 6 models of 1,000 bytes stored
    bounded = settings.model_copy(update={"scratch_max_bytes": 5_000})
    store = open_store(bounded)
    for n in range(12):
        store.put_bytes(f"files/file-{n}.jsonl", b"x" * 1_000)
    for n in range(6):
        _put_model(store, f"model-{n}", 1_000)

    # When they are all pulled, one after another (file-0 used again and again)
    most = 0
    first = local_file(bounded, store.url("files/file-0.jsonl"))
    for n in range(1, 12):
        local_file(bounded, store.url(f"files/file-{n}.jsonl"))
        most = max(most, _scratch_bytes(bounded))
        if n < 6:
            copy = model_store.local_model_dir(bounded, store.url(f"models/model-{n}"))
            assert (copy / "model.safetensors").is_file()  # the copy handed out is kept
            most = max(most, _scratch_bytes(bounded))
        os.utime(first, ns=(0, 0))  # make file-0's age plain: ...
        assert local_file(bounded, store.url("files/file-0.jsonl")) == first
        # ... using it again marks it as recently used

    # Then the cache never held more than its bound, and the copy in constant use stayed
    print(f"most held: {most} bytes of a 5,000-byte bound; "
          f"{sum(1 for _ in bounded.resolved_scratch_dir.rglob('*') if _.is_file())} copies left")
    assert most <= 5_000
    assert first.is_file()
    assert not (bounded.files_dir / "file-1.jsonl").exists()  # the least recently used went
