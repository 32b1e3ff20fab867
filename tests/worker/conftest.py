"""Worker tests share one data directory per module with the `distill worker` processes they start."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.factories.api import REDIS_URL
from tests.factories.worker import start_worker, stop_worker


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker_data")


@pytest.fixture
def settings(pg_url: str, redis_db: int, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """As conftest's, but one data directory for the module, shared with the worker process."""
    from app.settings import get_settings
    from tests.conftest import _truncate_all

    monkeypatch.setenv("DISTILL_DATABASE_URL", pg_url)
    monkeypatch.setenv("DISTILL_BROKER_URL", f"{REDIS_URL}/{redis_db}")
    monkeypatch.setenv("DISTILL_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    _truncate_all(pg_url)
    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def worker(settings: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A real `distill worker` process on the test database and Redis (no reconciler passes)."""
    proc = start_worker(settings, DISTILL_RECONCILE_INTERVAL_S="3600")
    yield proc
    stop_worker(proc)
