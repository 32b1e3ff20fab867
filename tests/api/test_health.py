"""`/readyz` answers without a key, so it names only the component that is down: the error
itself (hosts, user and database names) is logged, never sent."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.factories.api import assert_error


def test_readyz_hides_the_database_and_broker_errors_from_the_caller(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import get_settings

    # Given a database and a broker that cannot be reached, their URLs naming a host and a user
    monkeypatch.setenv("DISTILL_DATABASE_URL",
                       "postgresql+psycopg://secret_user:pw@127.0.0.1:9/secret_db")
    monkeypatch.setenv("DISTILL_BROKER_URL", "redis://secret_user:pw@127.0.0.1:9/0")
    get_settings.cache_clear()

    # When a caller without a key asks whether the API is ready
    with caplog.at_level(logging.WARNING), TestClient(create_app()) as client:
        response = client.get("/readyz")

    # Then it is told which components are down, and nothing of their errors
    assert_error(response, 503)
    assert response.json()["checks"] == {"database": "unavailable", "broker": "unavailable"}
    for secret in ("secret_user", "secret_db", "127.0.0.1", "psycopg", "Error"):
        assert secret not in response.text
    # And the operator finds the details in the log
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "database" in logged and "broker" in logged and "127.0.0.1" in logged


def test_readyz_is_ok_when_both_answer(client: Any) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
