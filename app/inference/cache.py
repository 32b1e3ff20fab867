"""Loaded predictors kept between requests, bounded by count and by bytes.

Each cached (model, runtime) has a slot: a `Batcher` (see `app.inference.batcher`), whose thread
loads the model, then serves its predict calls in batches. So a cold load of model A delays only
A's requests, never B's; and a request waiting for its model waits in that model's queue, not on
a thread of the server's pool, which stays free for authentication, `/healthz` and the rest.

Memory is bounded by the weights' size on disk (a fair estimate of a model's size in memory): the
least recently used slots are evicted while the cache holds more than `max_models` models or
`max_bytes` bytes, though never the model just asked for (one model over the bound is served
alone). An evicted slot finishes the calls already queued on it, then its thread ends.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from app.inference.batcher import Batcher, PredictInput, Rows
from app.inference.stats import BatchHook
from app.kit.storage import dir_mtime_ns
from distillation.runtimes import Runtime, ServingPredictor, load_predictor

DEFAULT_MAX_MODELS = 4
DEFAULT_MAX_BYTES = 2 * 1024**3
SlotKey = tuple[str, str]  # (model id, runtime)
Loader = Callable[[Path, Runtime], ServingPredictor]


@dataclass
class _Slot:
    batcher: Batcher
    stamp: int
    size_bytes: int


class PredictorCache:
    def __init__(
        self,
        *,
        max_models: int = DEFAULT_MAX_MODELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        loader: Loader | None = None,
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        threads: int | None = None,
        on_batch: BatchHook | None = None,
    ) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.max_batch, self.max_wait_s, self.threads = max_batch, max_wait_s, threads
        self.on_batch = on_batch
        # The default loader gives ONNX Runtime sessions the same thread count as torch.
        self._loader = loader or partial(load_predictor, threads=threads)
        self._slots: OrderedDict[SlotKey, _Slot] = OrderedDict()
        self._lock = threading.Lock()  # guards `_slots` only; never held while a model loads

    def submit(self, model_id: str, runtime: Runtime, model_dir: Path, size_bytes: int,
               inputs: Sequence[PredictInput], *, generate: bool = False,
               max_new_tokens: int = 0, stamp: int | None = None) -> Future[Rows]:
        """Queue a predict call on the model's batcher in `runtime` (the model loads on its first
        call; a changed directory, new mtime, is loaded afresh). `size_bytes`: the weights' size;
        `stamp`: the directory's `dir_mtime_ns` when the caller looked the model up lately (the
        look-up memo's); without it the directory is read on every call. No file-system call
        on this path when given: a `stat` releases the GIL, and taking it back from a busy model
        thread cost the event loop more than the call's own work.
        FileNotFoundError when the directory is gone (without `stamp`)."""
        if stamp is None:
            stamp = dir_mtime_ns(model_dir)
        key = (model_id, runtime)
        with self._lock:  # held while queuing too, so no call lands on a batcher closed meanwhile
            slot = self._slots.get(key)
            if slot is None or slot.stamp != stamp:
                if slot is not None:
                    slot.batcher.close()
                batcher = Batcher(
                    model_id=model_id, runtime=runtime,
                    load=lambda: self._loader(model_dir, runtime),
                    max_rows=self.max_batch, max_wait_s=self.max_wait_s, threads=self.threads,
                    on_batch=self.on_batch,
                )
                slot = self._slots[key] = _Slot(batcher=batcher, stamp=stamp,
                                                size_bytes=size_bytes)
            self._slots.move_to_end(key)
            self._evict()
            return slot.batcher.submit(inputs, generate=generate, max_new_tokens=max_new_tokens)

    def queued(self, model_id: str, runtime: Runtime) -> int:
        """Calls waiting for the model's thread to pick them up (0 when it is not cached)."""
        with self._lock:
            slot = self._slots.get((model_id, runtime))
            return slot.batcher.queued() if slot is not None else 0

    def _evict(self) -> None:
        """Drop the least recently used slots until both bounds hold (or one slot is left)."""
        while len(self._slots) > 1 and (
            len(self._slots) > self.max_models or self._bytes() > self.max_bytes
        ):
            _, slot = self._slots.popitem(last=False)
            slot.batcher.close()

    def _bytes(self) -> int:
        return sum(slot.size_bytes for slot in self._slots.values())

    def size_bytes(self) -> int:
        """The cached models' weights, in bytes."""
        with self._lock:
            return self._bytes()

    def keys(self) -> list[SlotKey]:
        """The cached (model id, runtime) slots, least recently used first."""
        with self._lock:
            return list(self._slots)

    def model_ids(self) -> list[str]:
        """The cached models, least recently used first."""
        return [model_id for model_id, _ in self.keys()]

    def clear(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                slot.batcher.close()
            self._slots.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)
