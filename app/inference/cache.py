"""Loaded predictors kept between requests, bounded by count and by bytes at every moment.

Each cached (model, runtime) has a slot: a `Batcher` (see `app.inference.batcher`), whose thread
loads the model, then serves its predict calls in batches. So a cold load of model A delays only
A's requests, never B's; and a request waiting for its model waits in that model's queue, not on
a thread of the server's pool, which stays free for authentication, `/healthz` and the rest.

Memory is bounded by the weights' size on disk (a fair estimate of a model's size in memory). A
batcher loads only once the cache *admits* it: while fewer than `max_models` models are
resident (loading, loaded, or evicted but still finishing their calls) and their bytes plus its
own fit in `max_bytes`, and no other copy of the same model is still alive. To make room for a
waiting model the cache closes the least recently used resident models, idle ones first: a
closed slot takes no new calls, answers those it holds, then frees its model, and only then is
the waiting one admitted (first come, first served). A call for a closed model starts a new slot
that waits its turn; so a model loads once per eviction, however many calls it serves. A model
larger than `max_bytes` alone is refused (503, `model_too_large`), never loaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from app.inference.batcher import Batcher, Conversation, PredictInput, Rows
from app.inference.stats import BatchHook
from app.kit.errors import ServiceUnavailable
from app.storage.local import dir_mtime_ns
from distillation.export.predict import ChatStream
from distillation.export.predictors import load_predictor
from distillation.export.runtimes import Runtime, ServingPredictor

DEFAULT_MAX_MODELS = 4
DEFAULT_MAX_BYTES = 2 * 1024**3
SlotKey = tuple[str, str]  # (model id, runtime)
Loader = Callable[[Path, Runtime], ServingPredictor]


class ModelTooLarge(ServiceUnavailable):
    code = "model_too_large"


@dataclass(eq=False)
class _Slot:
    """One batcher's standing with the cache (read and written under the cache's lock)."""

    cache: PredictorCache
    key: SlotKey
    stamp: int
    size_bytes: int
    batcher: Batcher = field(init=False)
    pending: int = 0  # calls handed in and not yet answered
    resident: bool = False  # admitted: its model is loading, loaded, or not yet freed
    closing: bool = False  # takes no new calls; its thread ends once it has answered them
    refused: bool = False  # never to be admitted (the cache was cleared)

    # The batcher's `Residency`.
    def admit(self) -> bool:
        return self.cache._admit(self)

    def unloaded(self) -> None:
        self.cache._unloaded(self)

    def answered(self, calls: int) -> None:
        self.cache._answered(self, calls)


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
        self._slots: OrderedDict[SlotKey, _Slot] = OrderedDict()  # open slots, least recent first
        self._resident: list[_Slot] = []  # admitted, model not yet freed (open or closing)
        self._waiting: deque[_Slot] = deque()  # to be admitted, first come first served
        # Guards all of the above; never held while a model loads or runs.
        self._lock = threading.Condition()
        self.loads = 0  # models admitted to load, ever
        self.evictions = 0  # resident models closed to make room, ever

    def submit(self, model_id: str, runtime: Runtime, model_dir: Path, size_bytes: int,
               inputs: Sequence[PredictInput] | Sequence[Conversation], *,
               generate: bool = False, max_new_tokens: int = 0, stamp: int | None = None,
               chat: bool = False, stream: ChatStream | None = None) -> Future[Rows]:
        """Queue a predict call on the model's batcher in `runtime` (the model loads on its first
        call; a changed directory, new mtime, is loaded afresh); `chat`, `stream`: conversations
        to answer, one streamed (`Batcher.submit`). `size_bytes`: the weights' size;
        `stamp`: the directory's `dir_mtime_ns` when the caller looked the model up lately (the
        look-up memo's); without it the directory is read on every call. No file-system call
        on this path when given: a `stat` releases the GIL, and taking it back from a busy model
        thread cost the event loop more than the call's own work.
        FileNotFoundError when the directory is gone (without `stamp`); `ModelTooLarge` (503)
        for a model over `max_bytes` alone."""
        if size_bytes > self.max_bytes:
            raise ModelTooLarge(
                f"Model {model_id} is too large to serve here: its weights take {size_bytes:,} "
                f"bytes, and this server loads at most {self.max_bytes:,} "
                "(DISTILL_PREDICT_CACHE_BYTES).", param="model_id")
        if stamp is None:
            stamp = dir_mtime_ns(model_dir)
        key = (model_id, runtime)
        with self._lock:  # held while queuing too, so no call lands on a batcher closed meanwhile
            slot = self._slots.get(key)
            if slot is not None and slot.stamp != stamp:
                self._close(slot)
                slot = None
            if slot is None:
                slot = self._slots[key] = _Slot(cache=self, key=key, stamp=stamp,
                                                size_bytes=size_bytes)
                slot.batcher = Batcher(
                    model_id=model_id, runtime=runtime,
                    load=lambda: self._loader(model_dir, runtime),
                    max_rows=self.max_batch, max_wait_s=self.max_wait_s, threads=self.threads,
                    on_batch=self.on_batch, residency=slot,
                )
            self._slots.move_to_end(key)
            slot.pending += 1
            return slot.batcher.submit(inputs, generate=generate, max_new_tokens=max_new_tokens,
                                       chat=chat, stream=stream)

    # -- the batchers' side (on their threads) ---------------------------------------------------
    def _admit(self, slot: _Slot) -> bool:
        with self._lock:
            if slot.refused:
                return False
            self._waiting.append(slot)
            while True:
                self._rebalance()
                if slot.resident or slot.refused:
                    return slot.resident
                self._lock.wait()

    def _unloaded(self, slot: _Slot) -> None:
        with self._lock:
            if slot.resident:
                slot.resident = False
                self._resident.remove(slot)
                self._rebalance()
                self._lock.notify_all()

    def _answered(self, slot: _Slot, calls: int) -> None:
        with self._lock:
            slot.pending -= calls
            if not slot.pending and self._waiting:
                self._rebalance()  # an idle model may now make room for a waiting one

    # -- bookkeeping (under the lock) ------------------------------------------------------------
    def _fits(self, slot: _Slot) -> bool:
        return (len(self._resident) < self.max_models
                and sum(s.size_bytes for s in self._resident) + slot.size_bytes <= self.max_bytes
                and all(s.key != slot.key for s in self._resident))

    def _rebalance(self) -> None:
        """Admit the waiting slots that fit, in order; make room for the first that does not."""
        admitted = False
        while self._waiting:
            head = self._waiting[0]
            if head.refused:
                self._waiting.popleft()
                continue
            if not self._fits(head):
                self._make_room(head)
                break
            self._waiting.popleft()
            head.resident = admitted = True
            self._resident.append(head)
            self.loads += 1
        if admitted:
            self._lock.notify_all()

    def _make_room(self, head: _Slot) -> None:
        """Close least recently used open resident models, idle ones first, until `head` will
        fit once every closing one has freed its model."""
        staying = [s for s in self._resident if not s.closing]
        order = {key: n for n, key in enumerate(self._slots)}
        candidates = sorted(staying, key=lambda s: (s.pending > 0, order.get(s.key, -1)))

        def fits() -> bool:
            return (len(staying) < self.max_models
                    and sum(s.size_bytes for s in staying) + head.size_bytes <= self.max_bytes)

        for slot in candidates:
            if fits():
                return
            self._close(slot)
            staying.remove(slot)
            self.evictions += 1

    def _close(self, slot: _Slot) -> None:
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
        if not slot.closing:
            slot.closing = True
            slot.batcher.close()

    # -- reading it ------------------------------------------------------------------------------
    def queued(self, model_id: str, runtime: Runtime) -> int:
        """Calls waiting for the model's thread to pick them up (0 when it is not cached)."""
        with self._lock:
            slot = self._slots.get((model_id, runtime))
            return slot.batcher.queued() if slot is not None else 0

    def size_bytes(self) -> int:
        """The weights of the models loaded (or loading, or being freed), in bytes."""
        with self._lock:
            return sum(slot.size_bytes for slot in self._resident)

    def loaded(self) -> int:
        """The models loaded (or loading, or being freed): never more than `max_models`."""
        with self._lock:
            return len(self._resident)

    def keys(self) -> list[SlotKey]:
        """The cached (model id, runtime) slots that take calls, least recently used first."""
        with self._lock:
            return list(self._slots)

    def model_ids(self) -> list[str]:
        """The cached models, least recently used first."""
        return [model_id for model_id, _ in self.keys()]

    def clear(self) -> None:
        """Close every slot: loaded models answer their calls, then are freed; calls waiting for
        a model not yet loaded fail (`CacheClosed`)."""
        with self._lock:
            for slot in list(self._slots.values()):
                slot.refused = not slot.resident
                self._close(slot)
            for slot in self._waiting:
                slot.refused = True
            self._lock.notify_all()

    def __len__(self) -> int:
        return self.loaded()
