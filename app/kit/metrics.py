"""The API process's Prometheus metrics: HTTP requests per route, and the `/metrics` scrape.

Every label takes a bounded set of values, or Prometheus stores a series per value: requests are
counted per route *template* (`/v1/models/{model_id}/predict`, never a model's id; `none` for a
path that matches no route).

The metric objects are made once per process, at import: an app built twice (tests build one per
test) shares them instead of registering them twice. The predict metrics are the predict path's
own (`app.inference.metrics`); `render_metrics` exports them with these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def route_templates(routes: Iterable[BaseRoute]) -> dict[int, str]:
    """Each route the router may put in `scope["route"]`, by `id` (routes are not hashable, and
    live as long as their app) → its full template. FastAPI keeps an
    included router's routes with their own path (`/models/{model_id}`) and resolves the prefix
    in an "effective route context" (`/v1/models/{model_id}`); other routes carry it."""
    templates: dict[int, str] = {}
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            for context in contexts():
                original = getattr(context, "original_route", None)
                if original is not None:
                    templates.setdefault(id(original), context.path)
        elif isinstance(path := getattr(route, "path", None), str):
            templates[id(route)] = path
    return templates


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status class
    (`/metrics` itself excluded). Pure ASGI, and the route is the one the router already
    matched (`scope["route"]`, a mount's or a 405's too): no second matching of the path against
    every route and no objects per request, which the instrumentator this replaces spent about
    a tenth of a predict call on. `routes`: the app's, read once they are all in place."""

    def __init__(self, app: ASGIApp, *, routes: Callable[[], Iterable[BaseRoute]]) -> None:
        self.app = app
        self._routes = routes
        self._templates: dict[int, str] | None = None
        self._mounts: set[str] = set()

    def template(self, scope: Scope) -> str:
        """The matched route's template, or `none` (no route matched)."""
        if self._templates is None:
            routes = list(self._routes())
            self._mounts = {route.path for route in routes if isinstance(route, Mount)}
            self._templates = route_templates(routes)
        route = scope.get("route")
        if route is not None:
            return self._templates.get(id(route), "none")
        # A mounted app (the dashboard's static files) is reached with no route in the scope
        # and the mount's path as its root path.
        root = scope.get("root_path", "")
        return root if root and root in self._mounts else "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # the app raised before it answered
        answered_at = 0.0

        async def timed_send(message: Message) -> None:
            nonlocal status, answered_at
            if message["type"] == "http.response.start":
                status, answered_at = message["status"], time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            method, handler = scope["method"], self.template(scope)
            HTTP_REQUESTS.labels(method, handler, f"{str(status)[0]}xx").inc()
            # Until the response starts: a live event stream or a download would otherwise
            # count its whole lifetime as latency.
            HTTP_SECONDS.labels(method, handler).observe(
                max(answered_at - started, 0.0) if answered_at else 0.0)


def render_metrics() -> bytes:
    """This process's metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)
