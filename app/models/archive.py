"""What an uploaded model archive may hold: a Hugging Face directory with safetensors weights.

Refused: pickle weights (loading them runs arbitrary code), Python files and `auto_map`
entries (remote code), members that escape the directory (see `app.kit.storage`), and archives
without a `config.json` or safetensors weights.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.kit import storage
from app.kit.errors import InvalidRequest
from app.kit.storage import ArchiveMember, UnsafeArchive

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so")
MAX_MEMBERS = 10_000
MAX_JSON_BYTES = 64 * 1024 * 1024  # tokenizer.json files of large vocabularies run to tens of MB


def invalid_archive(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="file", code="invalid_model_archive")


def check_members(members: list[ArchiveMember]) -> None:
    """Refuse pickles, code and archives that are not a model directory (before extracting)."""
    names = [m.name for m in members]
    for name in names:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise invalid_archive(
                f"{name}: pickle weights are not accepted (loading them can run code); "
                "save the model with safe_serialization=True to get .safetensors files."
            )
        if suffix in CODE_SUFFIXES:
            raise invalid_archive(
                f"{name}: code files are not accepted; upload a model that transformers "
                "loads without trust_remote_code."
            )
    if "config.json" not in names:
        raise invalid_archive(
            "The archive has no config.json at its root (or inside one top-level folder): "
            "pack a directory written by save_pretrained()."
        )
    if not any(name.endswith(".safetensors") and "/" not in name for name in names):
        raise invalid_archive(
            "The archive has no .safetensors weights next to config.json: "
            "save the model with safe_serialization=True."
        )


def _check_no_remote_code(model_dir: Path) -> None:
    # Any config (model, tokenizer, processor) may point at custom classes through `auto_map`.
    for path in model_dir.rglob("*.json"):
        if path.stat().st_size > MAX_JSON_BYTES:
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if path.name == "config.json":
                raise invalid_archive(f"config.json is not valid JSON ({exc}).") from exc
            continue
        if isinstance(content, dict) and "auto_map" in content:
            raise invalid_archive(
                f"{path.relative_to(model_dir)} has an 'auto_map' entry (remote code); "
                "upload a model that transformers loads without trust_remote_code."
            )


def unpack_model_archive(fileobj: BinaryIO, dest: Path, *, max_total_bytes: int) -> None:
    """Check and extract an uploaded model archive into `dest` (400 `invalid_model_archive`)."""
    try:
        storage.safe_extract_tar_gz(
            fileobj, dest, max_members=MAX_MEMBERS, max_total_bytes=max_total_bytes,
            check=check_members,
        )
    except UnsafeArchive as exc:
        raise invalid_archive(f"{exc}.") from exc
    _check_no_remote_code(dest)
