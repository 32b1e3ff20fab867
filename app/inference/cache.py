"""Loaded predictors kept between requests, bounded by count and by bytes.

Each cached model has a slot: one thread of its own that loads the model, then runs its predict
calls one at a time (fast tokenizers are not safe to share across threads, "Already borrowed",
and one call per model keeps CPU threads from thrashing). So a cold load of model A delays only
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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from app.kit.storage import dir_mtime_ns
from distillation.predict import Predictor

T = TypeVar("T")
DEFAULT_MAX_MODELS = 4
DEFAULT_MAX_BYTES = 2 * 1024**3


class _Slot:
    """One model's loader and call queue (a single-thread executor)."""

    def __init__(self, *, model_id: str, model_dir: Path, stamp: int, size_bytes: int,
                 loader: Callable[[Path], Predictor]) -> None:
        self.model_dir, self.stamp, self.size_bytes = model_dir, stamp, size_bytes
        self._loader = loader
        self._predictor: Predictor | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"predict-{model_id}")

    def submit(self, call: Callable[[Predictor], T]) -> Future[T]:
        return self._executor.submit(self._run, call)

    def _run(self, call: Callable[[Predictor], T]) -> T:
        # Only this slot's thread touches `_predictor`: no lock. A failed load is not kept, so
        # the next call tries again.
        if self._predictor is None:
            self._predictor = self._loader(self.model_dir)
        return call(self._predictor)

    def close(self) -> None:
        """Let the queued calls finish, then end the thread (and free the model)."""
        self._executor.shutdown(wait=False)


class PredictorCache:
    def __init__(
        self,
        *,
        max_models: int = DEFAULT_MAX_MODELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        loader: Callable[[Path], Predictor] = Predictor.load,
    ) -> None:
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._loader = loader
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._lock = threading.Lock()  # guards `_slots` only; never held while a model loads

    def submit(self, model_id: str, model_dir: Path, size_bytes: int,
               call: Callable[[Predictor], T]) -> Future[T]:
        """Run `call(predictor)` on the model's own thread, after its load if it is cold; a
        changed directory (new mtime) is loaded afresh. `size_bytes`: the weights' size."""
        stamp = dir_mtime_ns(model_dir)
        with self._lock:
            slot = self._slots.get(model_id)
            if slot is None or slot.stamp != stamp:
                if slot is not None:
                    slot.close()
                slot = _Slot(model_id=model_id, model_dir=model_dir, stamp=stamp,
                             size_bytes=size_bytes, loader=self._loader)
                self._slots[model_id] = slot
            self._slots.move_to_end(model_id)
            self._evict()
            return slot.submit(call)

    def _evict(self) -> None:
        """Drop the least recently used slots until both bounds hold (or one slot is left)."""
        while len(self._slots) > 1 and (
            len(self._slots) > self.max_models or self._bytes() > self.max_bytes
        ):
            _, slot = self._slots.popitem(last=False)
            slot.close()

    def _bytes(self) -> int:
        return sum(slot.size_bytes for slot in self._slots.values())

    def size_bytes(self) -> int:
        """The cached models' weights, in bytes."""
        with self._lock:
            return self._bytes()

    def model_ids(self) -> list[str]:
        """The cached models, least recently used first."""
        with self._lock:
            return list(self._slots)

    def clear(self) -> None:
        with self._lock:
            for slot in self._slots.values():
                slot.close()
            self._slots.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)
