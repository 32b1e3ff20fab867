"""Tests on an S3-compatible store (moto's server, started once for the session): the API in
this process and workers in others, each with a local folder of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.factories.api import REDIS_URL
from tests.factories.s3 import S3Server, moto_server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server) -> dict[str, str]:
    """The store variables of this test (a bucket of its own), for the API and its workers."""
    return s3_server.env()


@pytest.fixture
def settings(pg_url: str, redis_db: int, tmp_path: Path, s3_env: dict[str, str],
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The API's settings: the test database and Redis, the S3 store, and a data directory that
    no worker shares."""
    from app.settings import get_settings
    from tests.conftest import _truncate_all

    for name, value in {**s3_env, "DISTILL_DATABASE_URL": pg_url,
                        "DISTILL_BROKER_URL": f"{REDIS_URL}/{redis_db}",
                        "DISTILL_DATA_DIR": str(tmp_path / "api")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DISTILL_SCRATCH_DIR", raising=False)
    get_settings.cache_clear()
    _truncate_all(pg_url)
    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
    yield get_settings()
    get_settings.cache_clear()


def worker_env(tmp_path: Path, name: str) -> dict[str, str]:
    """A worker's own data directory and scratch cache (nothing shared with the API)."""
    return {"DISTILL_DATA_DIR": str(tmp_path / name), "DISTILL_HEARTBEAT_INTERVAL_S": "0.5",
            "DISTILL_STORE_SYNC_INTERVAL_S": "0.3", "DISTILL_RECONCILE_INTERVAL_S": "3600"}
