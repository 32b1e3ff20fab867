"""The API process's Prometheus metrics: HTTP requests per route, and the `/metrics` scrape.

Every label takes a bounded set of values, or Prometheus stores a series per value: requests are
counted per route *template* (`/v1/models/{model_id}/predict`, never a model's id; `none` for a
path that matches no route).

The metric objects are made once per process, at import: an app built twice (tests build one per
test) shares them instead of registering them twice. The predict metrics are the predict path's
own (`app.inference.metrics`); `render_metrics` exports them with these.
"""

from __future__ import annotations

from prometheus_client import (
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info
from starlette.types import ASGIApp

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
