"""Teacher outputs computed once per dataset and reused every epoch (offline KD): the one
`cache_teacher` loop, for every task.

The teacher is frozen and in eval mode and the training inputs carry no augmentation, so its
outputs on an example are the same every epoch: the `cache_teacher` stage runs it once over the
training set, and the loop looks its outputs up by example index (`EXAMPLE_INDEX`, a field the
batches carry) instead of running the teacher.

What is kept of the logits is the task's choice (its `CacheFormat`): a classifier's whole logit
row per example (`tasks.classification.LogitCache`); for the token-level tasks, whose
vocabularies are too wide for whole logits, the top-k tokens per target position
(`topk_cache.TopKCache`, see `tasks.token`).

Hidden states, for the losses that compare them (`hidden_mse`, `cosine`), are kept by a task
that says it can (`Task.caches_hidden_states`: sequence classification): only the indices the
loss terms read, only the real tokens, in fp16, in a file of their own that is read back
memory-mapped (`hidden_cache`). They take tokens × layers × width × 2 bytes, so the size is
estimated before the pass and held to a budget (`JobConfig.teacher_cache_max_bytes`); over it, or
when the student tokenises apart from the teacher (other token positions), nothing is cached and
the teacher runs every step (its logits come from the forward that gives the hidden states).
Attention maps (a tokens × tokens map per layer and head) are never cached: a job with
`attention_mse` runs the teacher every step, as does a token-level job with a hidden-state loss.

The cache is a tensor file in the job's work directory with a header (format version, what the
format keeps, which hidden states, dataset fingerprint, teacher identity), which the hidden-state
file repeats, so a resumed job reuses them and a changed teacher, dataset or layer set does not.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from distillation.config import Hyperparameters, Reporter
from distillation.layout import teacher_cache_path, teacher_hidden_path
from distillation.training.hidden_cache import (
    HiddenStateCache,
    HiddenStateSpec,
    HiddenStateWriter,
    readable_size,
    real_tokens,
)
from distillation.training.loop import (
    Collator,
    Features,
    Tracker,
    autocast,
    check_stop,
    optimizer_steps,
    to_device,
)

EXAMPLE_INDEX = "example_index"
CACHE_VERSION = 2  # 2: the header names the hidden states kept beside the logits
_CHECKSUM_VALUES = 1024  # per tensor: enough to tell a fine-tuned teacher from its base


def with_example_index(features: Sequence[Features]) -> list[Features]:
    """The features with their position in the dataset, so batches say which examples they hold."""
    return [{**row, EXAMPLE_INDEX: i} for i, row in enumerate(features)]


def skip_reason(
    hp: Hyperparameters, *, needs_hidden_states: bool, needs_attentions: bool, num_examples: int
) -> str | None:
    """Why the teacher's outputs should not be cached for this run; None when they should.
    `needs_hidden_states`: a loss compares hidden states that this task's cache cannot keep."""
    if needs_attentions:
        return ("a configured loss compares the teacher's attention maps, which the teacher cache "
                "does not keep (a tokens × tokens map per layer and head of every example); the "
                "teacher runs every step instead")
    if needs_hidden_states:
        return ("a configured loss compares the teacher's hidden states, which this task's "
                "teacher cache does not keep; the teacher runs every step instead")
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
    # The folder's name, not its path: a fine-tuned teacher lives in the work folder of the
    # attempt that loaded it, which differs from the attempt that cached its outputs.
    name = Path(str(getattr(config, "_name_or_path", ""))).name
    return {"name_or_path": name, "parameters": count, "checksum": digest.hexdigest()}


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


class CachedOutputs(Protocol):
    """What a cache format builds: the teacher's outputs on every training example."""

    def tensors(self) -> dict[str, Tensor]: ...


class CacheFormat(Protocol):
    """What a task keeps of the teacher's outputs, and how (see the module notes)."""

    kind: str  # the header's "kind"
    header: dict[str, Any]  # what else the cache depends on (the task, k, ...)
    prefix: str  # the teacher's inputs in a batch are named `prefix + name`

    def fingerprint(self, features: Sequence[Features]) -> str: ...

    def forward(self, teacher: nn.Module, batch: dict[str, Tensor], **flags: Any) -> Any:
        """The teacher's output on a batch, with its `logits` (run under autocast; `flags` are
        the forward's: `output_hidden_states` when the hidden states are cached too)."""
        ...

    def split(self, logits: Tensor, batch: dict[str, Tensor]) -> list[Any]:
        """What is kept of each example of the batch, in batch order."""
        ...

    def build(self, examples: list[Any], device: torch.device) -> CachedOutputs:
        """The cache from every example's part, in dataset order."""
        ...

    def restore(self, tensors: dict[str, Tensor], examples: int,
                device: torch.device) -> CachedOutputs | None:
        """The cache saved as `tensors`, or None when they do not hold one for `examples`."""
        ...

    def reused_message(self, examples: int) -> str: ...

    def cached_message(self, cache: Any, examples: int) -> str: ...


@dataclass
class TeacherCache:
    """What the `cache_teacher` stage hands the loop: the format's cache of the teacher's
    outputs, and the teacher's hidden states when they are kept."""

    outputs: Any  # what the format builds
    hidden: HiddenStateCache | None = None
    reused: bool = False  # read from an earlier attempt's files


def compute_teacher_outputs(
    teacher: nn.Module,
    features: Sequence[Features],
    collator: Collator,
    fmt: CacheFormat,
    *,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
    hidden: HiddenStateWriter | None = None,
) -> CachedOutputs:
    """One teacher pass over `features` (shortest first, so batches pad little), kept as `fmt`
    says, in dataset order; the hidden states it reads go to `hidden` when given."""
    order = sorted(range(len(features)),
                   key=lambda i: len(features[i][fmt.prefix + "input_ids"]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    tracker = Tracker(reporter, "cache_teacher", len(chunks))
    examples: list[Any] = [None] * len(features)
    flags = {"output_hidden_states": True} if hidden is not None else {}
    with torch.no_grad():
        for n, chunk in enumerate(chunks, start=1):
            check_stop(reporter)
            batch = to_device(collator([features[i] for i in chunk]), device)
            with autocast(device):
                output = fmt.forward(teacher, batch, **flags)
            for i, part in zip(chunk, fmt.split(output.logits, batch), strict=True):
                examples[i] = part
            if hidden is not None:
                hidden.write(chunk, output.hidden_states,
                             batch.get(fmt.prefix + "attention_mask"))
            tracker.report(n, 0)
    tracker.done(0)
    assert all(part is not None for part in examples)
    return fmt.build(examples, device)


def teacher_cache(
    teacher: nn.Module,
    features: Sequence[Features],
    collator: Collator,
    fmt: CacheFormat,
    *,
    work_dir: Path,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
    hidden_states: HiddenStateSpec | None = None,
) -> TeacherCache:
    """The teacher's outputs on `features` (what `fmt` builds, and the `hidden_states` asked
    for): read from the work directory when an earlier run of this job cached them for the same
    data, teacher, format and hidden states, else computed once and saved there."""
    path, hidden_path = teacher_cache_path(work_dir), teacher_hidden_path(work_dir)
    if hidden_states is None:
        hidden_path.unlink(missing_ok=True)  # an earlier attempt's, for other layers or data
    header = {"version": CACHE_VERSION, "kind": fmt.kind, **fmt.header,
              "examples": len(features), "fingerprint": fmt.fingerprint(features),
              "teacher": teacher_identity(teacher),
              "hidden_states": list(hidden_states.indices) if hidden_states else []}
    saved = load_tensors(path, header)
    restored = fmt.restore(saved, len(features), device) if saved is not None else None
    hidden = (HiddenStateCache.open(hidden_path, header, len(features))
              if hidden_states is not None and restored is not None else None)
    if restored is not None and (hidden_states is None or hidden is not None):
        reporter.message(fmt.reused_message(len(features)))
        if hidden_states is not None and hidden is not None:
            reporter.message(f"Reusing the teacher's cached hidden states at layers "
                             f"{hidden_states.layers()} ({hidden.shape[0]:,} tokens).")
        return TeacherCache(restored, hidden, reused=True)
    writer = None
    if hidden_states is not None:
        lengths = real_tokens(features, fmt.prefix)
        size = hidden_states.size(sum(lengths))
        reporter.message(
            f"Caching the teacher's hidden states at layers {hidden_states.layers()}: "
            f"{sum(lengths):,} tokens, {readable_size(size)} (budget "
            f"{readable_size(hidden_states.budget)}).",
            data={"teacher_cache": {"hidden_state_bytes": size,
                                    "budget_bytes": hidden_states.budget}})
        writer = HiddenStateWriter(hidden_path, header, hidden_states, lengths)
    try:
        cache = compute_teacher_outputs(teacher, features, collator, fmt, batch_size=batch_size,
                                        device=device, reporter=reporter, hidden=writer)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    hidden = writer.close() if writer is not None else None
    save_tensors(path, header, cache.tensors())
    reporter.message(fmt.cached_message(cache, len(features)))
    return TeacherCache(cache, hidden)
