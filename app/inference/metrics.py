"""The predict path's Prometheus metrics: batch sizes and times per runtime, requests per runtime
and outcome, and the models loaded.

Every label takes a bounded set of values, or Prometheus stores a series per value: runtimes and
outcomes outside the known ones count as `other`. The metric objects are made once per process,
at import (see `app.kit.metrics`), and exported at `/metrics` with the HTTP ones.

`observe_predict_batch`, `count_predict_request` and `set_loaded_models` are what the predict path
calls (the micro-batcher, after each batch; the model cache, when it loads or unloads a model).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from distillation.export.runtimes import RUNTIMES

disable_created_metrics()  # as `app.kit.metrics` does, whichever of the two is imported first

PREDICT_OUTCOMES = ("ok", "invalid", "rejected", "error")
PREDICT_BATCH_SIZE = Histogram(
    "distill_predict_batch_size", "Inputs per batch the predict batcher ran, by runtime.",
    ["runtime"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
PREDICT_BATCH_SECONDS = Histogram(
    "distill_predict_batch_seconds", "Seconds one predict batch took in its runtime.",
    ["runtime"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
PREDICT_REQUESTS = Counter(
    "distill_predict_requests", "Predict requests by runtime and outcome "
    f"({', '.join(PREDICT_OUTCOMES)}).", ["runtime", "outcome"])
LOADED_MODELS = Gauge("distill_loaded_models", "Models loaded for predict in this API process.")


def _runtime(runtime: str) -> str:
    return runtime if runtime in RUNTIMES else "other"


def observe_predict_batch(runtime: str, size: int, seconds: float) -> None:
    """One batch of `size` inputs ran in `runtime` in `seconds`."""
    PREDICT_BATCH_SIZE.labels(_runtime(runtime)).observe(size)
    PREDICT_BATCH_SECONDS.labels(_runtime(runtime)).observe(seconds)


def count_predict_request(runtime: str, outcome: str) -> None:
    """One predict request answered: `ok`, `invalid` (4xx), `rejected` (overload) or `error`."""
    PREDICT_REQUESTS.labels(_runtime(runtime),
                            outcome if outcome in PREDICT_OUTCOMES else "other").inc()


def set_loaded_models(n: int) -> None:
    """The number of models the predict cache holds now."""
    LOADED_MODELS.set(n)
