"""Dynamic micro-batching: the predict calls that reach one loaded model together run as one
forward pass.

Each (model, runtime) has one `Batcher`: a queue and a thread of its own that loads the model,
then takes the waiting calls in batches. A batch is the oldest waiting call plus every call that
can share its forward pass (classifiers: any; generation, and answers to conversations: the same
`max_new_tokens` and a prompt length in the same power-of-two bucket, so that little is padded),
up to `max_rows` inputs; a call is never split. A streamed answer (`ChatStream`) runs alone. A
lone call waits at most `max_wait_s` (counted from its arrival) for company; while a batch runs,
the next one fills anyway, so under load nobody waits for the timer.

Each caller gets its own rows back. A forward pass that raises is re-run call by call, so only
the call at fault fails. A caller that went away (its future cancelled before the batch started)
is left out of the batch.

A batcher may be told when its model may load (`Residency`): the predictor cache grants a load
only while the loaded models stay within its bounds, and learns when each call is answered and
when the model is freed. Alone (no residency) it loads at once.

One thread per model because fast tokenizers are not safe to share across threads ("Already
borrowed"), and one forward at a time per model keeps torch's threads from thrashing. Every batch
served is reported to `on_batch` (`BatchStats`): the one place that sees batch sizes and latency.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from app.inference.stats import BatchHook, BatchStats
from distillation.export.predict import ChatStream
from distillation.export.runtimes import ServingPredictor

log = logging.getLogger(__name__)

PredictInput = str | list[str]
Conversation = list[dict[str, Any]]  # chat turns, checked by `data.chat.conversation_problem`
Rows = list[dict[str, Any]]


class Residency(Protocol):
    """What a batcher tells whoever bounds the loaded models (`app.inference.cache`)."""

    def admit(self) -> bool:
        """Block until the model may load; False: it never will (the calls waiting fail)."""
        ...

    def unloaded(self) -> None:
        """The model is freed, or its load failed: its share of the bound is free again."""
        ...

    def answered(self, calls: int) -> None:
        """`calls` handed-in calls are done (answered, failed or cancelled)."""
        ...


class _Unbounded:
    def admit(self) -> bool:
        return True

    def unloaded(self) -> None:
        pass

    def answered(self, calls: int) -> None:
        pass


class CacheClosed(RuntimeError):
    """The model was never loaded: the cache holding it was cleared first."""


@dataclass(eq=False)
class _Call:
    inputs: Sequence[Any]  # texts (or text pairs); conversations when `chat`
    generate: bool
    max_new_tokens: int
    chat: bool = False
    stream: ChatStream | None = None  # one conversation's answer, streamed
    future: Future[Rows] = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    group: tuple[Any, ...] | None = None  # what it may share a batch with (set on the thread)


class Batcher:
    """One model's queue of predict calls, served in batches on a thread of its own."""

    def __init__(
        self,
        *,
        model_id: str,
        runtime: str,
        load: Callable[[], ServingPredictor],
        max_rows: int,
        max_wait_s: float,
        threads: int | None = None,
        on_batch: BatchHook | None = None,
        residency: Residency | None = None,
    ) -> None:
        self.model_id, self.runtime = model_id, runtime
        self._load = load
        self._residency: Residency = residency or _Unbounded()
        self._max_rows, self._max_wait_s = max(1, max_rows), max(0.0, max_wait_s)
        self._threads = threads
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._predictor: ServingPredictor | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=f"predict-{model_id}-{runtime}",
                                        daemon=True)
        self._thread.start()

    def submit(self, inputs: Sequence[PredictInput] | Sequence[Conversation], *,
               generate: bool = False, max_new_tokens: int = 0, chat: bool = False,
               stream: ChatStream | None = None) -> Future[Rows]:
        """Queue one caller's inputs (`chat`: conversations to answer; `stream`: the one
        conversation's answer as it comes); the future holds its rows (cancel it to drop the
        call)."""
        call = _Call(inputs=inputs, generate=generate or chat, max_new_tokens=max_new_tokens,
                     chat=chat, stream=stream)
        self._queue.put(call)
        return call.future

    def queued(self) -> int:
        """Calls handed in but not yet picked up by the model's thread (approximate)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Serve the calls already queued, then end the thread (and free the model)."""
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the model's thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        if self._threads:
            # Per thread under OpenMP: set where the model runs (see docs/serving.md, "Predict").
            torch.set_num_threads(self._threads)
        waiting: deque[_Call] = deque()
        while waiting or not self._closing:
            if not waiting and not self._receive(waiting, timeout=None):
                continue
            if not self._ensure_loaded(waiting):
                continue
            batch = self._take(waiting)
            try:
                self._run([c for c in batch if c.future.set_running_or_notify_cancel()])
            finally:
                self._residency.answered(len(batch))
        if self._predictor is not None:
            self._predictor = None  # the last reference: the model is freed here
            self._residency.unloaded()

    def _receive(self, waiting: deque[_Call], timeout: float | None) -> bool:
        """Wait for one more call (None: no limit); False on timeout or the close sentinel."""
        try:
            call = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        if call is None:
            self._closing = True
            return False
        waiting.append(call)
        return True

    def _receive_ready(self, waiting: deque[_Call]) -> None:
        while True:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                return
            if call is None:
                self._closing = True
            else:
                waiting.append(call)

    def _ensure_loaded(self, waiting: deque[_Call]) -> bool:
        """Load the model on first use. A failed load fails the calls waiting now and is not
        kept, so the next call tries again."""
        if self._predictor is not None:
            return True
        if not self._residency.admit():
            self._fail(waiting, CacheClosed(f"model {self.model_id} was unloaded before it loaded"))
            return False
        try:
            self._predictor = self._load()
            # The loaded model's Python objects (hundreds of thousands, with the libraries')
            # move out of the collector's reach: a full collection walking them all took about
            # 250 ms, stalling every call in flight (the serving benchmark's p99).
            gc.freeze()
            return True
        except Exception as exc:
            self._residency.unloaded()
            self._fail(waiting, exc)
            return False

    def _fail(self, waiting: deque[_Call], exc: BaseException) -> None:
        failed = len(waiting)
        while waiting:
            call = waiting.popleft()
            if call.future.set_running_or_notify_cancel():
                call.future.set_exception(exc)
        self._residency.answered(failed)

    def _take(self, waiting: deque[_Call]) -> list[_Call]:
        """The oldest call and the waiting calls that can join it (up to `max_rows` inputs),
        waiting for more until the oldest call has waited `max_wait_s`."""
        self._receive_ready(waiting)  # those that came while the model loaded, too
        for call in waiting:
            if call.group is None:
                call.group = self._group(call)
        first = waiting.popleft()
        batch, rows = [first], len(first.inputs)
        deadline = first.arrived + self._max_wait_s
        scanned = 0
        while rows < self._max_rows:
            # Join the compatible calls already waiting, oldest first, skipping what no longer fits.
            pending = list(waiting)
            kept = pending[:scanned]  # looked at in an earlier round: they stay, in order
            for call in pending[scanned:]:
                if call.group is None:
                    call.group = self._group(call)
                if call.group == first.group and rows + len(call.inputs) <= self._max_rows:
                    batch.append(call)
                    rows += len(call.inputs)
                else:
                    kept.append(call)
            waiting.clear()
            waiting.extend(kept)
            scanned = len(waiting)
            left = deadline - time.monotonic()
            if rows >= self._max_rows or left <= 0 or self._closing:
                break
            if not self._receive(waiting, timeout=left):
                break
            self._receive_ready(waiting)
        return batch

    def _group(self, call: _Call) -> tuple[Any, ...]:
        if not call.generate:
            return ("classify",)
        if call.stream is not None:
            return ("stream", id(call))  # generated for one reader, batch of one
        if call.chat:
            chars = sum(len(str(turn.get("content", ""))) for c in call.inputs for turn in c)
            return ("chat", call.max_new_tokens, max(1, chars // 4).bit_length())
        tokenizer = getattr(self._predictor, "tokenizer", None)
        if tokenizer is not None:
            longest = max(len(ids) for ids in tokenizer(list(call.inputs))["input_ids"])
        else:
            longest = max(len(text) for text in call.inputs) // 4
        # Prompts within 2x of each other's length share a batch: little is padded.
        return ("generate", call.max_new_tokens, max(1, longest).bit_length())

    def _run(self, batch: list[_Call]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        try:
            results = self._forward(batch)
        except Exception as exc:
            self._report(batch, started, ok=False)
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            for call in batch:  # one by one: only the call at fault fails
                self._run_alone(call)
            return
        self._report(batch, started, ok=True)
        for call, rows in zip(batch, results, strict=True):
            call.future.set_result(rows)

    def _run_alone(self, call: _Call) -> None:
        started = time.perf_counter()
        try:
            rows = self._forward([call])[0]
        except Exception as exc:
            self._report([call], started, ok=False)
            call.future.set_exception(exc)
            return
        self._report([call], started, ok=True)
        call.future.set_result(rows)

    def _forward(self, batch: list[_Call]) -> list[Rows]:
        """One forward pass over the batch's inputs, split back into each call's rows."""
        assert self._predictor is not None
        inputs = [item for call in batch for item in call.inputs]
        if batch[0].chat:
            out = self._predictor.chat(inputs, batch[0].max_new_tokens, stream=batch[0].stream)
        elif batch[0].generate:
            texts = [item for item in inputs if isinstance(item, str)]
            out = self._predictor.generate(texts, batch[0].max_new_tokens)
        else:
            out = self._predictor.classify(inputs)
        if len(out) != len(inputs):
            raise RuntimeError(f"the model gave {len(out)} rows for {len(inputs)} inputs")
        split, start = [], 0
        for call in batch:
            split.append(out[start : start + len(call.inputs)])
            start += len(call.inputs)
        return split

    def _report(self, batch: list[_Call], started: float, *, ok: bool) -> None:
        if self._on_batch is None:
            return
        stats = BatchStats(model_id=self.model_id, runtime=self.runtime, requests=len(batch),
                           rows=sum(len(c.inputs) for c in batch),
                           seconds=time.perf_counter() - started, ok=ok)
        try:
            self._on_batch(stats)
        except Exception:  # a broken hook never fails a prediction
            log.exception("predict batch hook failed")
