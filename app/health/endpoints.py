"""`/healthz` (the process is up), `/readyz` (database and broker reachable) and `/metrics`
(Prometheus); no key needed, so `/readyz` says only which component is down: the error, which
names hosts and user names, goes to the server's log."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from app.deps import SettingsDep
from app.kit.db import engine_for
from app.kit.metrics import METRICS_PATH, render_metrics

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_database(url: str) -> str | None:
    try:
        with engine_for(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def _check_broker(url: str) -> str | None:
    from kombu import Connection

    try:
        with Connection(url) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


@router.get("/readyz", response_model=None)
def readyz(settings: SettingsDep) -> dict[str, Any] | JSONResponse:
    checks = {
        "database": _check_database(settings.sqlalchemy_url),
        "broker": _check_broker(settings.celery_broker_url),
    }
    body = {name: ("ok" if err is None else "unavailable") for name, err in checks.items()}
    if any(checks.values()):
        failed = ", ".join(name for name, err in checks.items() if err)
        for name, err in checks.items():
            if err:
                log.warning("readiness check failed: %s: %s", name, err)
        return JSONResponse(
            {"error": {"code": "not_ready", "message": f"not reachable: {failed}", "param": None},
             "checks": body},
            status_code=503,
        )
    return {"status": "ok", "checks": body}


@router.get(METRICS_PATH, include_in_schema=False)
def metrics() -> Response:
    """Prometheus text format: HTTP, predict and queue metrics (docs/operating.md, "Metrics and logs")."""
    return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)
