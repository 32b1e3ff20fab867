"""The FastAPI application: the contract's `/v1` routes, health checks, Prometheus metrics at
`/metrics`, OpenAPI at `/docs`
(Swagger UI and ReDoc served from the `fastapi-offline` package, so the docs load with no
internet access) and the dashboard at `/ui` (`app.ui`, every asset served from the package)."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from app.auth.logs import redact_key_logs
from app.deps import reject_nul_in_url
from app.files.endpoints import router as files_router
from app.health.endpoints import router as health_router
from app.inference.endpoints import router as inference_router
from app.jobs.endpoints import router as jobs_router
from app.jobs.metrics import install_jobs_collector
from app.kit.body_limit import BodyLimitMiddleware
from app.kit.http_errors import ERROR_RESPONSES, install_error_handlers
from app.kit.metrics import HttpMetricsMiddleware
from app.kit.request_id import RequestIdMiddleware
from app.models.endpoints import router as models_router
from app.settings import get_settings
from app.ui.endpoints import install_ui

# The routes that stream a multipart body to disk under their own, larger limits
# (`app.files.multipart`); every other body is capped by `BodyLimitMiddleware`.
UPLOAD_ROUTES = {("POST", "/v1/files"), ("POST", "/v1/models")}


def create_app() -> FastAPI:
    app = FastAPIOffline(
        title="distill",
        version="1",
        summary="Distillation as a service: upload data, distil a teacher into a small student.",
        docs_url="/docs",
    )
    install_error_handlers(app)
    redact_key_logs()  # logging is configured by the time uvicorn loads the app
    # Middleware added later wraps the earlier: the cap runs inside the metrics and request id.
    app.add_middleware(BodyLimitMiddleware, exempt=UPLOAD_ROUTES,
                       max_bytes=lambda: get_settings().max_request_body_bytes)
    app.add_middleware(HttpMetricsMiddleware, routes=lambda: app.routes)
    app.add_middleware(RequestIdMiddleware)  # outermost: every line of the request carries it
    install_jobs_collector()
    app.include_router(health_router)
    for router in (files_router, jobs_router, models_router):
        app.include_router(router, prefix="/v1", responses=ERROR_RESPONSES,
                           dependencies=[Depends(reject_nul_in_url)])
    # Predict checks its URL, key and body itself, with no dependency to solve per call.
    app.include_router(inference_router, prefix="/v1", responses=ERROR_RESPONSES)
    install_ui(app)
    return app


app = create_app()
