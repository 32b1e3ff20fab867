"""Parameter count and weight size read from safetensors headers (no weights loaded)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from safetensors import safe_open

from app.storage.local import dir_mtime_ns


@dataclass(frozen=True)
class WeightStats:
    parameters: int
    size_bytes: int  # bytes of the .safetensors files


def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files at the top of a model directory (one, or the shards of a sharded save)."""
    return sorted(p for p in model_dir.glob("*.safetensors") if p.is_file() and not p.is_symlink())


@lru_cache(maxsize=256)
def _stats(model_dir: str, _stamp: int) -> WeightStats:
    files = safetensors_files(Path(model_dir))
    if not files:
        raise ValueError("no .safetensors weights in the model directory")
    parameters = 0
    for path in files:
        try:
            with safe_open(str(path), framework="np") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    parameters += math.prod(handle.get_slice(name).get_shape())
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise ValueError(f"{path.name} is not a readable safetensors file ({exc})") from exc
    return WeightStats(parameters=parameters, size_bytes=sum(p.stat().st_size for p in files))


def weight_stats(model_dir: Path) -> WeightStats:
    """Parameters and weight bytes of a model directory; cached until the directory changes.

    Raises ValueError when there are no weights or a header cannot be read.
    """
    return _stats(str(model_dir.resolve()), dir_mtime_ns(model_dir))
