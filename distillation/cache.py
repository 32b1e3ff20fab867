"""Teacher outputs computed once per dataset and reused every epoch (offline KD).

The teacher is frozen and in eval mode and the training inputs carry no augmentation, so its
outputs on an example are the same every epoch: the `cache_teacher` stage computes the logits of
every training example once, and the loop looks them up by example index (`EXAMPLE_INDEX`, a
field the batches carry) instead of running the teacher. Only logits are cached: hidden states or
attention maps (L layers × tokens × width per example) would be too big, so a job with a loss that
needs them runs the teacher every step instead.

The cache is a tensor file in the job's work directory with a header (format version, dataset
fingerprint, teacher identity), so a resumed job reuses it and a changed teacher or dataset does
not. LM vocabularies are too wide for full logits: see `topk_cache.TopKCache`.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distillation.config import Hyperparameters, Reporter
from distillation.data import Features
from distillation.training import (
    Tracker,
    autocast,
    check_stop,
    model_inputs,
    optimizer_steps,
    to_device,
)

EXAMPLE_INDEX = "example_index"
CACHE_FILE = "teacher_cache.pt"
CACHE_VERSION = 1
_CHECKSUM_VALUES = 1024  # per tensor: enough to tell a fine-tuned teacher from its base


def cache_path(work_dir: Path) -> Path:
    return work_dir / CACHE_FILE


def with_example_index(features: Sequence[Features]) -> list[Features]:
    """The features with their position in the dataset, so batches say which examples they hold."""
    return [{**row, EXAMPLE_INDEX: i} for i, row in enumerate(features)]


def skip_reason(
    hp: Hyperparameters, *, needs_hidden_states: bool, needs_attentions: bool, num_examples: int
) -> str | None:
    """Why the teacher's outputs should not be cached for this run; None when they should."""
    if needs_hidden_states or needs_attentions:
        what = "hidden states" if needs_hidden_states else "attention maps"
        return (f"a configured loss compares the teacher's {what}, which would be too big to "
                "keep for every example; the teacher runs every step instead")
    batches_per_epoch = math.ceil(num_examples / hp.batch_size)
    batches = (optimizer_steps(batches_per_epoch, hp, hp.epochs)
               * max(1, hp.gradient_accumulation_steps))
    if batches <= batches_per_epoch:
        return "the run sees each example at most once, so a cache would save nothing"
    return None


def dataset_fingerprint(features: Sequence[Features], prefix: str = "",
                        keys: Sequence[str] = ("input_ids", "token_type_ids")) -> str:
    """sha256 of the teacher's encoded inputs (by default token ids and segment ids), in
    dataset order."""
    digest = hashlib.sha256()
    digest.update(len(features).to_bytes(8, "little"))
    for row in features:
        for key in keys:
            values = row.get(prefix + key)
            if values is not None:
                digest.update(key.encode())
                digest.update(torch.as_tensor(values, dtype=torch.int64).numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def teacher_identity(teacher: nn.Module) -> dict[str, Any]:
    """Where the teacher came from and a checksum of its weights (a cheap one: each tensor's
    shape, sum and first values), so a re-fine-tuned or different teacher misses the cache."""
    digest = hashlib.sha256()
    count = 0
    with torch.no_grad():
        for name, tensor in teacher.state_dict().items():
            count += tensor.numel()
            flat = tensor.detach().flatten()
            digest.update(f"{name}:{tuple(tensor.shape)}:{float(flat.double().sum()):.6e}".encode())
            digest.update(flat[:_CHECKSUM_VALUES].float().cpu().numpy().tobytes())
    config = getattr(teacher, "config", None)
    return {"name_or_path": str(getattr(config, "_name_or_path", "")), "parameters": count,
            "checksum": digest.hexdigest()}


@dataclass
class LogitCache:
    """The teacher's logits on every training example: row i belongs to example i."""

    logits: Tensor  # (N, C) float32, on the training device
    path: Path
    reused: bool  # read from an earlier run's file rather than computed now

    def lookup(self, batch: dict[str, Tensor]) -> Tensor:
        """The cached teacher logits of a batch's examples, in batch order."""
        return self.logits[batch[EXAMPLE_INDEX].to(self.logits.device)]


def compute_teacher_logits(
    teacher: nn.Module,
    features: Sequence[Features],
    collator: Callable[[list[Features]], dict[str, Tensor]],
    *,
    prefix: str,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
) -> Tensor:
    """One teacher pass over `features` (shortest first, so batches pad little), as (N, C) fp32."""
    order = sorted(range(len(features)), key=lambda i: len(features[i][prefix + "input_ids"]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    tracker = Tracker(reporter, "cache_teacher", len(chunks))
    rows: list[Tensor] = []
    with torch.no_grad():
        for n, chunk in enumerate(chunks, start=1):
            check_stop(reporter)
            batch = to_device(collator([features[i] for i in chunk]), device)
            with autocast(device):
                logits = teacher(**model_inputs(teacher, batch, prefix)).logits
            rows.append(logits.float())
            tracker.report(n, 0)
    tracker.done(0)
    logits = torch.cat(rows)
    # Back from length order to dataset order.
    out = torch.empty_like(logits)
    out[torch.tensor(order, device=logits.device)] = logits
    return out


def load_tensors(path: Path, header: dict[str, Any]) -> dict[str, Tensor] | None:
    """The tensors saved at `path` when its header is `header` (same data, same teacher), else None."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None
    if not isinstance(saved, dict) or saved.get("header") != header:
        return None
    tensors = saved.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(t, Tensor) for t in tensors.values()):
        return None
    return tensors


def save_tensors(path: Path, header: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Write a cache file: the header that says what it was computed from, and its tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"header": header, "tensors": {k: t.cpu() for k, t in tensors.items()}}, partial)
    os.replace(partial, path)  # a worker killed mid-write leaves no half a cache behind


def teacher_logit_cache(
    teacher: nn.Module,
    features: Sequence[Features],
    collator: Callable[[list[Features]], dict[str, Tensor]],
    *,
    work_dir: Path,
    prefix: str,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
) -> LogitCache:
    """The teacher's logits on `features`: read from the work directory when an earlier run of
    this job cached them for the same data and teacher, else computed once and saved there."""
    path = cache_path(work_dir)
    header = {"version": CACHE_VERSION, "kind": "logits", "examples": len(features),
              "fingerprint": dataset_fingerprint(features, prefix),
              "teacher": teacher_identity(teacher)}
    saved = load_tensors(path, header)
    if saved is not None and "logits" in saved and saved["logits"].shape[0] == len(features):
        reporter.message(f"Reusing the teacher's cached outputs on {len(features)} examples.")
        return LogitCache(saved["logits"].to(device), path, reused=True)
    logits = compute_teacher_logits(teacher, features, collator, prefix=prefix,
                                    batch_size=batch_size, device=device, reporter=reporter)
    save_tensors(path, header, {"logits": logits})
    reporter.message(f"Cached the teacher's outputs on {len(features)} examples; every epoch "
                     "reuses them instead of running the teacher.")
    return LogitCache(logits, path, reused=False)
