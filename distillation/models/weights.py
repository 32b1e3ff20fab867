"""Does `config.json` describe the weights next to it? Checked from the safetensors headers alone.

transformers builds the model the config describes and then fills it from the weights; what the
weights lack (or, with `ignore_mismatched_sizes`, hold at another shape) it creates at full size.
So a `vocab_size` of a billion over a 1 MB weights file allocates gigabytes at load. Here the
model is built on the meta device (shapes, no memory), as transformers itself builds it before
loading, and compared with the headers: every tensor both name must agree in shape, and the
model may hold only a little more than the weights do (a new task head).
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel

from distillation.models.files import CONFIG, UnsafeModel, read_json, weight_files

# A header larger than this is refused before it is parsed: real ones run to tens of KB per file
# (a shard of a large mixture of experts to a few MB).
MAX_HEADER_BYTES = 8 * 1024 * 1024
# safetensors dtypes, in bits per element.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
# Config keys that count modules: each layer (or unfused expert) is at least one tensor.
_LAYER_KEY = re.compile(r"(^|_)(n_)?layers?$|^n_layer$|^num_.*layers$|(^|_)blocks?$")
_EXPERT_KEY = re.compile(r"experts")
# What a model may hold beyond its weights: a new task head, a pooler (1% of it, at least 1M).
MISSING_FRACTION = 0.01
MISSING_FLOOR = 1 << 20


def read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a .safetensors file, its header checked against the file's size."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise UnsafeModel(f"{path.name} is not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise UnsafeModel(f"{path.name} declares a header of {length} bytes (the file has "
                              f"{size}; headers over {MAX_HEADER_BYTES} bytes are refused)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UnsafeModel(f"{path.name} is not a readable safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise UnsafeModel(f"{path.name} is not a readable safetensors file (bad header)")
    data_bytes = size - 8 - length
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shapes[name] = _entry_shape(path.name, name, entry, data_bytes)
    return shapes


def _entry_shape(file: str, name: str, entry: Any, data_bytes: int) -> tuple[int, ...]:
    bad = UnsafeModel(f"{file}: the header entry of {name[:100]!r} is malformed")
    if not isinstance(entry, dict):
        raise bad
    shape, offsets, bits = entry.get("shape"), entry.get("data_offsets"), DTYPE_BITS.get(
        entry.get("dtype"))  # type: ignore[arg-type]
    if (bits is None or not isinstance(shape, list) or not isinstance(offsets, list)
            or len(offsets) != 2 or not all(type(v) is int and v >= 0 for v in shape + offsets)):
        raise bad
    begin, end = offsets
    if not begin <= end <= data_bytes or (end - begin) * 8 != math.prod(shape) * bits:
        raise UnsafeModel(f"{file}: tensor {name[:100]!r} of shape {shape} does not fit its "
                          f"bytes {offsets} (the file holds {data_bytes} bytes of data)")
    return tuple(shape)


def check_counts(config: dict[str, Any], shapes: dict[str, tuple[int, ...]], *,
                 what: str = CONFIG) -> None:
    """Layer and expert counts bounded by the weights before a model is built from them (each
    layer is a module of Python objects, even on the meta device); `what` names the config."""
    tensors = len(shapes)
    experts = max([tensors] + [shape[0] for shape in shapes.values() if len(shape) >= 3])
    stack = [config]
    while stack:
        node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict):
                stack.append(value)
            elif type(value) is int:
                if _LAYER_KEY.search(key) and value > tensors:
                    raise UnsafeModel(f"{what}: '{key}' is {value}, but the weights hold only "
                                      f"{tensors} tensors")
                if _EXPERT_KEY.search(key) and value > experts:
                    raise UnsafeModel(f"{what}: '{key}' is {value}, more experts than the "
                                      "weights can hold")


def _model_class(config: Any) -> Any:
    """The class `architectures` names, when transformers has it; the base model otherwise."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, str(name), None) if str(name).isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            return cls
    return AutoModel


def meta_model(config: Any, model_class: Any, *, what: str = CONFIG) -> torch.nn.Module:
    """The model `config` describes, built on the meta device (shapes, no memory)."""
    try:
        with torch.device("meta"):
            if isinstance(model_class, type) and issubclass(model_class, PreTrainedModel):
                return model_class._from_config(config)
            return model_class.from_config(config, trust_remote_code=False)  # type: ignore[no-any-return]
    except Exception as exc:  # transformers raises many kinds for a config it cannot build
        raise UnsafeModel(f"{what} does not describe a model transformers can build "
                          f"({str(exc)[:300]})") from exc


def check_weights_fit_config(model_dir: Path, model_class: Any | None = None) -> None:
    """UnsafeModel unless the model `config.json` describes (as `model_class`, or the class its
    `architectures` names) matches the weights' headers: shapes of the tensors both name, and no
    more than a task head's worth of parameters the weights lack."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(model_dir):
        shapes.update(read_header(path))
    raw = read_json(model_dir / CONFIG)
    if not isinstance(raw, dict):
        raise UnsafeModel(f"{CONFIG} is not a JSON object")
    check_counts(raw, shapes)
    try:
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False,
                                            local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a bad config
        raise UnsafeModel(f"not a loadable Hugging Face config: {str(exc)[:300]}") from exc
    model = meta_model(config, model_class or _model_class(config))
    prefix = getattr(model, "base_model_prefix", "") or ""
    for key, tensor in model.state_dict().items():
        candidates = [key, key.removeprefix(prefix + "."), f"{prefix}.{key}"] if prefix else [key]
        stored = next((shapes[c] for c in candidates if c in shapes), None)
        if stored is not None and stored != tuple(tensor.shape):
            raise UnsafeModel(
                f"{CONFIG} does not match the weights: by its dimensions {key} has shape "
                f"{list(tensor.shape)}, the weights hold {list(stored)}"
            )
    check_built_size(model, sum(math.prod(shape) for shape in shapes.values()))


def check_built_size(model: torch.nn.Module, stored_total: int, *, what: str = CONFIG) -> None:
    """UnsafeModel when the (meta) model holds more values than the weights' `stored_total` and
    a task head's worth: the loader would create the difference at full size."""
    built = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    allowed = stored_total + max(int(stored_total * MISSING_FRACTION), MISSING_FLOOR)
    if built > allowed:
        raise UnsafeModel(
            f"{what} describes a model of {built:,} values but the weights hold {stored_total:,}: "
            "the loader would create the difference at full size"
        )
