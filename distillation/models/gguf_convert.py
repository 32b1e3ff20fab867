"""A checked GGUF file (`distillation.models.gguf`) dequantised by transformers' own GGUF loader
and saved as a safetensors Hugging Face folder, which every other part of the service then loads
as any model: the conversion happens once (at upload, or at a built-in's first use), never at
every load.

transformers builds the model its metadata describes before it reads a weight, so that model is
first built on the meta device and compared with what the tensors hold (as for safetensors
uploads, `distillation.models.weights`), and a tensor the file lacks is refused rather than left
at its random initial value.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from distillation.models.files import UnsafeModel, check_model_dir
from distillation.models.gguf import GgufSummary, InvalidGguf, check_gguf
from distillation.models.weights import (
    check_built_size,
    check_counts,
    check_weights_fit_config,
    meta_model,
)


def convert_gguf(gguf_path: Path, out_dir: Path, *, max_parameters: int | None = None
                 ) -> GgufSummary:
    """Check a GGUF file, dequantise it with transformers (offline, float32: exactly the file's
    values) and save it as a safetensors Hugging Face folder at `out_dir` (which must not exist),
    with its tokenizer and chat template; written in a temporary sibling and renamed into place.

    InvalidGguf when the file is refused or transformers cannot make a model of it.
    """
    summary = check_gguf(gguf_path, max_parameters=max_parameters)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        _convert(gguf_path, summary, staging)
        os.rename(staging, out_dir)
    except InvalidGguf:
        raise
    except UnsafeModel as exc:  # the checks every model folder passes, applied on the way
        raise InvalidGguf(str(exc)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _convert(gguf_path: Path, summary: GgufSummary, out: Path) -> None:
    folder, name = str(gguf_path.parent), gguf_path.name
    offline: dict[str, Any] = {"gguf_file": name, "local_files_only": True,
                               "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(folder, **offline)
    except Exception as exc:  # transformers raises many kinds for metadata it cannot map
        raise InvalidGguf(f"transformers cannot read its metadata ({str(exc)[:300]})") from exc
    # The model the metadata describes is built before its weights are read: its size is
    # checked on the meta device against what the tensors hold.
    shapes = {tensor.name: tensor.shape for tensor in summary.tensors}
    check_counts(config.to_dict(), shapes, what="its metadata")
    check_built_size(meta_model(config, AutoModelForCausalLM, what="its metadata"),
                     summary.parameters, what="its metadata")
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            folder, config=config, dtype=torch.float32, output_loading_info=True, **offline)
        model, loading = loaded
        tokenizer = AutoTokenizer.from_pretrained(folder, **offline)
    except Exception as exc:  # shapes that disagree with the metadata, a tokenizer it cannot build
        raise InvalidGguf(f"transformers cannot load it ({str(exc)[:300]})") from exc
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        raise InvalidGguf(f"it lacks the weights of {', '.join(missing[:5])}"
                          f"{' and more' if len(missing) > 5 else ''}")
    # Dequantised, the model is plain float32; only the loader's record of the file is left.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    # `general.name` becomes `_model_name_or_path`: free text, not a path the folder may name.
    if hasattr(model.config, "_model_name_or_path"):
        delattr(model.config, "_model_name_or_path")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # The folder passes what every uploaded folder passes before anything loads it.
    check_model_dir(out)
    check_weights_fit_config(out, AutoModelForCausalLM)
