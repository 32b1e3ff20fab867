"""Dynamic micro-batching of predict calls: batched rows equal one-by-one rows, concurrent calls
really share a forward pass, a failing or cancelled call leaves the others alone, generation is
batched by `max_new_tokens` and prompt length.

The models are real (a tiny BERT classifier, a tiny GPT-2); each batcher's load is held until the
test's calls have all queued, so which calls share a batch does not depend on timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from app.inference.batcher import Batcher, PredictInput
from app.inference.stats import BatchLog
from distillation.export.predict import Predictor
from tests.factories.lm import save_gpt2

STUCK_S = 60
# A mix of lengths, single texts and pairs, in calls of 1 to 3 inputs.
CALLS: list[list[PredictInput]] = [
    ["a lovely film"],
    ["dull", ["the plot", "was great"]],
    ["an astonishingly long and winding sentence about a film that nobody asked for, twice over"],
    [["acting", "awful and the rest of it was even worse than that"], "ok", "fine"],
    ["x"],
]


def wait_until(condition: Callable[[], bool], timeout: float = STUCK_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Poisoned:
    """The real predictor, failing any batch that holds the input `poison` (a stand-in for an
    input the model chokes on)."""

    def __init__(self, inner: Predictor, poison: str) -> None:
        self.inner, self.poison, self.task = inner, poison, inner.task

    def classify(self, inputs: Any) -> list[dict[str, Any]]:
        if self.poison in inputs:
            raise RuntimeError("the model choked on an input")
        return self.inner.classify(inputs)

    def generate(self, inputs: Any, max_new_tokens: int) -> list[dict[str, Any]]:
        return self.inner.generate(inputs, max_new_tokens)


def held_batcher(load: Callable[[], Any], log: BatchLog, **options: Any
                 ) -> tuple[Batcher, threading.Event]:
    """A batcher whose model load waits for the returned event."""
    release = threading.Event()

    def held() -> Any:
        release.wait(STUCK_S)
        return load()

    batcher = Batcher(model_id="m", runtime="torch", load=held, max_rows=options.pop("max_rows", 64),
                      max_wait_s=options.pop("max_wait_s", 0.002), on_batch=log, **options)
    return batcher, release


def submit_all(batcher: Batcher, release: threading.Event,
               calls: list[tuple[list[PredictInput], int]], *, generate: bool = False
               ) -> list[Future[Any]]:
    """Queue every call while the load is held, then let the model load."""
    futures = [batcher.submit(inputs, generate=generate, max_new_tokens=tokens)
               for inputs, tokens in calls]
    wait_until(lambda: batcher.queued() <= len(calls) - 1)  # the first is taken, loading
    release.set()
    return futures


@pytest.fixture(scope="module")
def predictor(tiny_teacher_dir: Path) -> Predictor:
    return Predictor.load(tiny_teacher_dir)


def assert_same_rows(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [row["label"] for row in got] == [row["label"] for row in expected]
    for row, alone in zip(got, expected, strict=True):
        assert row["scores"] == pytest.approx(alone["scores"], abs=1e-5)
        assert row["score"] == pytest.approx(alone["score"], abs=1e-5)


def test_batched_rows_equal_one_by_one(tiny_teacher_dir: Path, predictor: Predictor) -> None:
    # Given every call queued before the model is loaded
    log = BatchLog()
    batcher, release = held_batcher(lambda: Predictor.load(tiny_teacher_dir), log)

    # When they are served
    futures = submit_all(batcher, release, [(inputs, 0) for inputs in CALLS])
    results = [f.result(timeout=STUCK_S) for f in futures]

    # Then they share one forward pass, and each caller gets its own rows, equal to the rows
    # each input gets alone (fp32: scores within 1e-5)
    assert [(b.requests, b.rows, b.ok) for b in log.recent()] == [
        (len(CALLS), sum(map(len, CALLS)), True)]
    for inputs, rows in zip(CALLS, results, strict=True):
        assert_same_rows(rows, [predictor.classify([item])[0] for item in inputs])
    batcher.close()


def test_max_rows_bounds_a_batch_and_never_splits_a_call(tiny_teacher_dir: Path) -> None:
    log = BatchLog()
    batcher, release = held_batcher(lambda: Predictor.load(tiny_teacher_dir), log, max_rows=4)

    futures = submit_all(batcher, release, [(inputs, 0) for inputs in CALLS])
    results = [f.result(timeout=STUCK_S) for f in futures]

    # 1 + 2 + 1 inputs fill the first batch; the 3-input call and the last go together next
    assert [(b.requests, b.rows) for b in log.recent()] == [(3, 4), (2, 4)]
    assert [len(rows) for rows in results] == [len(inputs) for inputs in CALLS]
    batcher.close()


def test_a_failing_call_fails_alone(tiny_teacher_dir: Path, predictor: Predictor) -> None:
    # Given a batch of three calls, the middle one holding an input the model fails on
    log = BatchLog()
    batcher, release = held_batcher(
        lambda: Poisoned(Predictor.load(tiny_teacher_dir), poison="boom"), log)
    calls: list[list[PredictInput]] = [["a lovely film"], ["fine", "boom"], [["a", "b"]]]

    futures = submit_all(batcher, release, [(inputs, 0) for inputs in calls])

    # Then the batch fails, is re-run call by call, and only the bad call fails
    with pytest.raises(RuntimeError, match="choked"):
        futures[1].result(timeout=STUCK_S)
    for index in (0, 2):
        assert_same_rows(futures[index].result(timeout=STUCK_S),
                         [predictor.classify([item])[0] for item in calls[index]])
    assert [(b.requests, b.ok) for b in log.recent()] == [(3, False), (1, True), (1, False),
                                                          (1, True)]
    # And the batcher goes on serving
    assert len(batcher.submit(["again"]).result(timeout=STUCK_S)) == 1
    batcher.close()


def test_a_cancelled_caller_is_left_out(tiny_teacher_dir: Path, predictor: Predictor) -> None:
    # Given three callers awaiting their calls as the route does, the model not yet loaded
    log = BatchLog()
    batcher, release = held_batcher(lambda: Predictor.load(tiny_teacher_dir), log)
    calls: list[list[PredictInput]] = [["a lovely film"], ["dull", "very dull"], ["fine"]]

    async def scenario() -> tuple[list[Any], bool]:
        futures = [batcher.submit(inputs) for inputs in calls]
        tasks = [asyncio.ensure_future(asyncio.wrap_future(f)) for f in futures]
        await asyncio.to_thread(wait_until, lambda: batcher.queued() <= len(calls) - 1)
        # When the second caller's connection goes (its task is cancelled)
        tasks[1].cancel()
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, futures[1].cancelled()

    results, dropped = asyncio.run(scenario())

    # Then its call is dropped before the batch runs, and the others are served together
    assert dropped and isinstance(results[1], asyncio.CancelledError)
    assert_same_rows(results[0], predictor.classify(calls[0]))
    assert_same_rows(results[2], predictor.classify(calls[2]))
    assert [(b.requests, b.rows) for b in log.recent()] == [(2, 2)]
    batcher.close()


def test_generation_batches_by_tokens_and_length(tmp_path: Path) -> None:
    # Given a tiny GPT-2 and calls with two prompt lengths and two max_new_tokens
    lm_dir = save_gpt2(tmp_path / "lm")
    alone = Predictor.load(lm_dir)
    long = "sun moon star red green blue cat dog bird one two three"
    calls: list[tuple[list[PredictInput], int]] = [
        (["red cat"], 4), (["blue dog", "one two three"], 4), ([long], 4), (["red cat"], 6),
        (["green bird"], 4),
    ]
    log = BatchLog()
    batcher, release = held_batcher(lambda: Predictor.load(lm_dir), log)

    futures = submit_all(batcher, release, calls, generate=True)
    results = [f.result(timeout=STUCK_S) for f in futures]

    # Then the short prompts with 4 new tokens share a batch (left-padded), the long prompt and
    # the call for 6 tokens run apart, each in arrival order of its oldest call
    assert [(b.requests, b.rows) for b in log.recent()] == [(3, 4), (1, 1), (1, 1)]
    # And the texts equal those generated one prompt at a time
    for (inputs, tokens), rows in zip(calls, results, strict=True):
        assert rows == [alone.generate([str(text)], tokens)[0] for text in inputs]
    batcher.close()


def test_calls_that_cannot_join_wait_for_the_next_batch(tmp_path: Path) -> None:
    # Given a call for 4 tokens and one for 6 queued while the model loads, and a long wait
    lm = save_gpt2(tmp_path / "lm")
    log = BatchLog()
    batcher, release = held_batcher(lambda: Predictor.load(lm), log, max_rows=2, max_wait_s=STUCK_S)
    first, other = submit_all(batcher, release, [(["red cat"], 4), (["blue dog"], 6)],
                              generate=True)

    # When a second 4-token call arrives while the first batch waits for company
    wait_until(lambda: batcher.queued() == 0)
    late = batcher.submit(["green bird"], generate=True, max_new_tokens=4)
    # (and a second 6-token call, so that the next batch fills instead of waiting out STUCK_S)
    company = batcher.submit(["white owl"], generate=True, max_new_tokens=6)

    # Then it joins the first call, and the 6-token call, passed over, runs next with its company
    for future in (first, other, late, company):
        assert len(future.result(timeout=STUCK_S)) == 1
    assert [(b.requests, b.rows) for b in log.recent()] == [(2, 2), (2, 2)]
    batcher.close()
