"""The download formats of a model published in an S3 store: each archive, streamed from the
store, loads in its runtime (as the same formats do from a local folder, tests/api/test_downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.api.test_downloads import distilled, download, exported_dir, onnx_labels
from tests.factories.api import assert_error

__all__ = ["distilled", "exported_dir"]  # the fixtures, used here on the S3 store's settings


def test_each_format_streams_from_the_store(client: Any, auth: dict[str, str], distilled: str,
                                            settings: Any, tmp_path: Path) -> None:
    assert settings.storage_url.startswith("s3://")
    hf, _ = download(client, auth, distilled, "hf", tmp_path / "hf")
    assert (hf / "model.safetensors").is_file() and (hf / "config.json").is_file()
    assert not (hf / "onnx").exists() and not (hf / "onnx-int8").exists()

    fp32, _ = download(client, auth, distilled, "onnx", tmp_path / "onnx")
    int8, _ = download(client, auth, distilled, "onnx-int8", tmp_path / "int8")
    for folder in (fp32, int8):  # members at the archive root, not under onnx/
        assert {"model.onnx", "config.json", "tokenizer.json", "README.md"} <= {
            p.name for p in folder.iterdir()}
    labels, probs = onnx_labels(fp32)
    labels8, probs8 = onnx_labels(int8)
    assert labels8 == labels and np.abs(probs8 - probs).max() < 0.05


def test_a_stored_model_without_onnx(client: Any, auth: dict[str, str],
                                     tiny_teacher_dir: Path) -> None:
    from tests.factories.api import dir_members, tar_gz
    from tests.factories.api import upload_archive as upload

    model_id = upload(client, auth, tar_gz(dir_members(tiny_teacher_dir))).json()["id"]
    response = client.get(f"/v1/models/{model_id}/download?format=onnx", headers=auth)
    assert_error(response, 400, param="format")
    assert "downloaded as: hf." in response.json()["error"]["message"]
