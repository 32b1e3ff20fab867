"""The API process's Prometheus metrics: HTTP requests per route, and predict batches.

Every label takes a bounded set of values, or Prometheus stores a series per value: requests are
counted per route *template* (`/v1/models/{model_id}/predict`, never a model's id; `none` for a
path that matches no route), per-runtime and per-outcome values outside the known ones count as
`other`.

The metric objects are made once per process, at import: an app built twice (tests build one per
test) shares them instead of registering them twice.

`observe_predict_batch`, `count_predict_request` and `set_loaded_models` are what the predict path
calls (the micro-batcher, after each batch; the model cache, when it loads or unloads a model).
"""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info
from starlette.types import ASGIApp

from distillation.export.runtimes import RUNTIMES

METRICS_PATH = "/metrics"
disable_created_metrics()  # no `_created` twin of every counter: half the lines, nothing lost

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests by method, route template and status class.",
    ["method", "handler", "status"])
HTTP_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Seconds until the response starts, by method and route template.",
    ["method", "handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

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


def _record_request(info: Info) -> None:
    HTTP_REQUESTS.labels(info.method, info.modified_handler, info.modified_status).inc()
    # Until the response starts: a live event stream or a download would otherwise count its
    # whole lifetime as latency.
    HTTP_SECONDS.labels(info.method, info.modified_handler).observe(
        info.modified_duration_without_streaming)


def instrument_http(app: ASGIApp) -> None:
    """Count and time every request of `app` by route template (`/metrics` itself excluded)."""
    instrumentator = Instrumentator(excluded_handlers=[METRICS_PATH], should_group_untemplated=True,
                                    should_exclude_streaming_duration=True)
    instrumentator.add(_record_request)
    instrumentator.instrument(app)  # type: ignore[arg-type]


def render_metrics() -> bytes:
    """This process's metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)
