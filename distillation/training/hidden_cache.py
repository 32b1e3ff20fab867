"""The teacher's hidden states in the teacher cache: for every training example, the rows of its
real (unpadded) tokens at the hidden-state indices the loss terms read, in fp16, in one file that
is read back memory-mapped.

Hidden states are big: tokens × layers × width × 2 bytes (8,000 examples of 128 tokens at 4 layers
of 768 is 6.3 GB), so they are written batch by batch through a memory map rather than gathered
in memory, and a training batch reads only its own examples' rows from the map. A budget
(`JobConfig.teacher_cache_max_bytes`) bounds the file: over it, `plan_hidden_cache` warns and the
teacher runs every step for the hidden-state terms instead.

The file (`layout.TEACHER_HIDDEN`) is a safetensors file written by hand, so that it can be filled
in place: `offsets` (int64, examples + 1: example i's rows are `offsets[i]:offsets[i + 1]`) and
`hidden` (fp16, total tokens × indices × width); its metadata holds the cache header (that of the
logit cache, which names the indices too), the indices and the teacher's count of hidden states.

A batch's rows go back to the positions its attention mask marks real (the classification
collators pad on the right; a tokenizer that pads on the left works the same), zeros elsewhere,
which the hidden-state losses mask out.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from distillation.config import Reporter
from distillation.training.loop import Features

_FP16_MAX = 65504.0  # a larger activation is clamped, not turned into inf
_HEADER_LIMIT = 1 << 24  # bytes of a file's JSON header: anything larger is not ours
_ROW = np.dtype("<f2")
_OFFSET = np.dtype("<i8")


@dataclass(frozen=True)
class HiddenStateSpec:
    """Which of the teacher's hidden states the cache keeps, their width, and the bytes it may take."""

    indices: tuple[int, ...]  # into the teacher's `hidden_states` (0: embeddings, i + 1: layer i)
    count: int  # the teacher's `hidden_states`: its layers + 1
    width: int
    budget: int  # bytes

    def size(self, tokens: int) -> int:
        """Bytes of the cache of `tokens` real tokens (fp16)."""
        return tokens * len(self.indices) * self.width * 2

    def layers(self) -> str:
        """The indices as the layer map names them: 0-based layers, or the embeddings."""
        return ", ".join("embeddings" if i == 0 else str(i - 1) for i in self.indices)


def real_tokens(features: Sequence[Features], prefix: str = "") -> list[int]:
    """Each example's real tokens (its unpadded input ids)."""
    return [len(row[prefix + "input_ids"]) for row in features]


def readable_size(size: int) -> str:
    """Bytes for a reader: "8.6 GB", "36.9 MB", "1.0 kB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size / 1e3:,.1f} kB"


def plan_hidden_cache(features: Sequence[Features], spec: HiddenStateSpec, *,
                      same_positions: bool, reporter: Reporter) -> HiddenStateSpec | None:
    """`spec` when the teacher's hidden states on `features` can be cached within its budget;
    else None and an event saying why (a warning naming the size and the budget when over it):
    then nothing is cached and the teacher runs every step (its logits come out of the forward
    that gives the hidden states)."""
    if not same_positions:
        reporter.message("Not caching the teacher's hidden states: the student tokenises apart "
                         "from the teacher, so their token positions differ; the teacher runs "
                         "every step for the hidden-state terms.")
        return None
    tokens = sum(real_tokens(features))
    size = spec.size(tokens)
    if size > spec.budget:
        reporter.message(
            f"Not caching the teacher's hidden states at layers {spec.layers()}: {tokens:,} "
            f"tokens would take {readable_size(size)}, over the teacher cache's budget of "
            f"{readable_size(spec.budget)} (DISTILL_TEACHER_CACHE_MAX_BYTES); the teacher runs "
            "every step instead.", level="warning",
            data={"teacher_cache": {"hidden_state_bytes": size, "budget_bytes": spec.budget}})
        return None
    return spec


class HiddenStateNotCached(LookupError):
    """A loss asked the cache for a hidden state it does not keep."""


class CachedHiddenStates(Sequence[Tensor]):
    """One batch's teacher hidden states from the cache, indexed as a model's `hidden_states`
    (0: embeddings, i + 1: layer i, negative from the end) but holding only the cached indices:
    asking for another raises `HiddenStateNotCached`."""

    def __init__(self, states: dict[int, Tensor], count: int) -> None:
        self.states, self.length = states, count

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Tensor]: ...

    def __getitem__(self, index: int | slice) -> Tensor | Sequence[Tensor]:
        if isinstance(index, slice):
            raise TypeError("the cached hidden states are read one index at a time")
        position = index + self.length if index < 0 else index
        if position not in self.states:
            raise HiddenStateNotCached(
                f"the teacher cache keeps the teacher's hidden states {sorted(self.states)} "
                f"(of {self.length}), not {index}")
        return self.states[position]


@dataclass
class HiddenStateCache:
    """A hidden-state file, memory-mapped: `rows` is never read whole, only a batch's rows."""

    path: Path
    indices: tuple[int, ...]
    count: int
    offsets: np.ndarray  # (examples + 1,) int64
    rows_at: int  # where `hidden` starts in the file, in bytes
    shape: tuple[int, int, int]  # (total tokens, indices, width)
    rows: np.memmap = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rows = np.memmap(self.path, dtype=_ROW, mode="r", offset=self.rows_at,
                              shape=self.shape)

    def __getstate__(self) -> dict[str, Any]:
        # Another process (a DDP rank) maps the file itself rather than receiving its contents.
        return {k: v for k, v in self.__dict__.items() if k != "rows"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @classmethod
    def open(cls, path: Path, header: dict[str, Any], examples: int) -> HiddenStateCache | None:
        """The file at `path` when it is whole and was written for `header` (the same data,
        teacher and indices) and `examples` examples; else None."""
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > _HEADER_LIMIT:
                    return None
                entries = json.loads(f.read(length))
                meta, offsets_entry, hidden = (entries["__metadata__"], entries["offsets"],
                                               entries["hidden"])
                if json.loads(meta["header"]) != header:
                    return None
                offsets = np.fromfile(f, dtype=_OFFSET, count=examples + 1)
            indices, count = tuple(json.loads(meta["indices"])), int(meta["count"])
            shape = tuple(int(n) for n in hidden["shape"])
            rows_at = 8 + length + offsets.nbytes
            whole = (offsets_entry["shape"] == [examples + 1] and len(offsets) == examples + 1
                     and hidden["dtype"] == "F16" and len(shape) == 3
                     and shape[:2] == (int(offsets[-1]), len(indices))
                     and path.stat().st_size == rows_at + int(np.prod(shape)) * _ROW.itemsize)
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            return None
        if not whole:
            return None
        return cls(path, indices, count, offsets, rows_at,
                   (shape[0], shape[1], shape[2]))

    def lookup(self, examples: Tensor, mask: Tensor | None, length: int,
               device: torch.device) -> CachedHiddenStates:
        """The cached hidden states of a batch's examples (dataset indices, in batch order), each
        (B, `length`, D) float32 on `device`: a row at every position `mask` marks real (the
        first ones when there is no mask), zeros elsewhere."""
        ids = examples.cpu().numpy()
        starts, ends = self.offsets[ids], self.offsets[ids + 1]
        values = torch.from_numpy(np.concatenate(
            [self.rows[start:end] for start, end in zip(starts, ends, strict=True)]))
        counts = torch.as_tensor(ends - starts, device=device)
        if mask is None:
            real = torch.arange(length, device=device)[None, :] < counts[:, None]
        else:
            real = mask.to(device).bool()
            if not torch.equal(real.sum(dim=1), counts):
                raise ValueError("the batch's real tokens are not those the teacher cache kept "
                                 "for its examples")
        padded = torch.zeros((len(ids), length, *self.shape[1:]), device=device)
        padded[real] = values.to(device).float()
        return CachedHiddenStates({index: padded[:, :, k] for k, index in enumerate(self.indices)},
                                  self.count)


class HiddenStateWriter:
    """Writes a hidden-state file batch by batch through a memory map; `close` puts it in place
    (a worker killed mid-write leaves only a `.partial` file, which nothing reads)."""

    def __init__(self, path: Path, header: dict[str, Any], spec: HiddenStateSpec,
                 lengths: Sequence[int]) -> None:
        self.path, self.header, self.spec = path, header, spec
        self.offsets = np.zeros(len(lengths) + 1, dtype=_OFFSET)
        np.cumsum(lengths, out=self.offsets[1:])
        self.partial = path.with_name(path.name + ".partial")
        shape = (int(self.offsets[-1]), len(spec.indices), spec.width)
        rows_at = self._layout(shape)
        self.rows = np.memmap(self.partial, dtype=_ROW, mode="r+", offset=rows_at, shape=shape)

    def _layout(self, shape: tuple[int, int, int]) -> int:
        """Write the file's header and offsets, and size it; returns where its rows start."""
        offsets_bytes = self.offsets.nbytes
        rows_bytes = int(np.prod(shape)) * _ROW.itemsize
        entries = {
            "__metadata__": {"header": json.dumps(self.header, sort_keys=True),
                             "indices": json.dumps(list(self.spec.indices)),
                             "count": str(self.spec.count)},
            "offsets": {"dtype": "I64", "shape": [len(self.offsets)],
                        "data_offsets": [0, offsets_bytes]},
            "hidden": {"dtype": "F16", "shape": list(shape),
                       "data_offsets": [offsets_bytes, offsets_bytes + rows_bytes]},
        }
        text = json.dumps(entries).encode()
        text += b" " * (-len(text) % 8)  # safetensors: the tensors start 8-byte aligned
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.partial.open("wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            f.write(self.offsets.tobytes())
            f.truncate(8 + len(text) + offsets_bytes + rows_bytes)
        return 8 + len(text) + offsets_bytes

    def write(self, examples: Sequence[int], hidden_states: Sequence[Tensor],
              mask: Tensor | None) -> None:
        """Keep the real-token rows of a batch (`examples`: their dataset indices, in batch
        order; `mask`: the batch's attention mask)."""
        stacked = torch.stack([hidden_states[i] for i in self.spec.indices], dim=2)  # (B, L, K, D)
        stacked = stacked.float().clamp(-_FP16_MAX, _FP16_MAX).half().cpu()
        real = mask.bool().cpu() if mask is not None else None
        for b, example in enumerate(examples):
            start, end = int(self.offsets[example]), int(self.offsets[example + 1])
            rows = stacked[b, real[b]] if real is not None else stacked[b, : end - start]
            if rows.shape[0] != end - start:
                raise ValueError(f"example {example}: {rows.shape[0]} real tokens in its batch, "
                                 f"{end - start} input ids")
            self.rows[start:end] = rows.numpy()

    def discard(self) -> None:
        """Drop the unfinished file (the pass stopped)."""
        del self.rows
        self.partial.unlink(missing_ok=True)

    def close(self) -> HiddenStateCache:
        """The finished file, in place and mapped for reading."""
        self.rows.flush()
        del self.rows
        os.replace(self.partial, self.path)
        cache = HiddenStateCache.open(self.path, self.header, len(self.offsets) - 1)
        assert cache is not None
        return cache
