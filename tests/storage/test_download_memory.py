"""A model download on an S3 store streams: the API's peak memory grows by far less than the
archive it sends (measured on a real `distill api` process, from its VmHWM)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories.api import make_key
from tests.factories.api_process import peak_rss_bytes, reset_peak_rss, start_api, stop_api

MB = 1024 * 1024


def model_archive(out: Path, tiny_teacher_dir: Path) -> bytes:
    """A ~60 MB classifier (random weights: they do not compress) as an upload archive."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=768, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_teacher_dir / name).exists():
            (out / name).write_bytes((tiny_teacher_dir / name).read_bytes())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(out, arcname="model")
    return buffer.getvalue()


def upload(url: str, auth: dict[str, str], archive: bytes) -> str:
    response = httpx.post(f"{url}/v1/models", headers=auth, timeout=600,
                          files={"file": ("m.tar.gz", archive, "application/gzip")})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def download(url: str, auth: dict[str, str], model_id: str) -> int:
    sent = 0
    with httpx.stream("GET", f"{url}/v1/models/{model_id}/download", headers=auth,
                      timeout=600) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            sent += len(chunk)
    return sent


@pytest.mark.slow
def test_a_download_from_the_store_streams_in_bounded_memory(
    settings: Any, tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    auth = make_key(settings, "acme")
    archive = model_archive(tmp_path / "big", tiny_teacher_dir)
    proc, url = start_api(settings, DISTILL_DATA_DIR=str(tmp_path / "api"))
    try:
        # Given a ~60 MB model in the store, and an API that has served a download already
        big = upload(url, auth, archive)
        small = upload(url, auth, _tiny(tiny_teacher_dir))
        download(url, auth, small)
        reset_peak_rss(proc.pid)
        before = peak_rss_bytes(proc.pid)
        # When the big one is downloaded
        sent = download(url, auth, big)
        growth = peak_rss_bytes(proc.pid) - before
    finally:
        stop_api(proc)
    print(f"download of {sent / MB:.1f} MB: the API's peak RSS grew {growth / MB:.1f} MB")
    # Then the API held a small part of it at any time
    assert sent > 50 * MB
    assert growth < sent / 4


def _tiny(tiny_teacher_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tiny_teacher_dir, arcname="model")
    return buffer.getvalue()
