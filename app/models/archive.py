"""What an uploaded model archive may hold: a Hugging Face directory with safetensors weights.

Refused, each with a 400 `invalid_model_archive` naming the problem: archives past a limit (members,
unpacked size, name length, compression ratio: checked while the stream is read, see
`app.models.untar`), members that are links, devices or escape the directory, pickle weights (loading
them runs arbitrary code), Python files and `auto_map` entries (remote code), config keys that
steer the loader, weight indexes and settings keys (`vocab_file`, `name_or_path`, ...) that point
outside the folder, JSON files over 64 MB, and a
`config.json` whose dimensions do not match the safetensors headers.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.kit.errors import InvalidRequest
from app.models.untar import ArchiveLimits, ExtractedFile, UnsafeArchive, safe_extract_tar_gz
from distillation.models.files import (
    CONFIG,
    SAFE_INDEX,
    SAFE_WEIGHTS,
    UnsafeModel,
    check_json_files,
    check_model_dir,
)
from distillation.models.weights import check_weights_fit_config

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so")
MAX_MEMBERS = 10_000


def invalid_archive(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="file", code="invalid_model_archive")


def archive_limits(max_total_bytes: int) -> ArchiveLimits:
    """The limits an upload is unpacked under (the unpacked size follows the upload limit)."""
    return ArchiveLimits(max_members=MAX_MEMBERS, max_total_bytes=max_total_bytes)


def check_name(name: str) -> None:
    """Refuse pickles and code as their header arrives, before their data is read."""
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


def check_files(files: list[ExtractedFile]) -> None:
    """Refuse archives that are not a model directory (before the directory is kept)."""
    names = {f.name for f in files}
    if CONFIG not in names:
        raise invalid_archive(
            "The archive has no config.json at its root (or inside one top-level folder): "
            "pack a directory written by save_pretrained()."
        )
    if SAFE_WEIGHTS not in names and SAFE_INDEX not in names:
        raise invalid_archive(
            f"The archive has no .safetensors weights next to config.json ({SAFE_WEIGHTS} or a "
            f"sharded {SAFE_INDEX}): save the model with safe_serialization=True."
        )


def unpack_model_archive(fileobj: BinaryIO, dest: Path, *, max_total_bytes: int) -> None:
    """Check and unpack an uploaded model archive into `dest` (400 `invalid_model_archive`).

    On a refusal `dest` may hold part of the archive; the caller removes it.
    """
    try:
        safe_extract_tar_gz(fileobj, dest, limits=archive_limits(max_total_bytes),
                            check_name=check_name, check=check_files)
    except UnsafeArchive as exc:
        raise invalid_archive(f"{exc}.") from exc
    try:
        check_json_files(dest)
        check_model_dir(dest)
        check_weights_fit_config(dest)
    except UnsafeModel as exc:
        raise invalid_archive(f"{exc}.") from exc
