"""Client and CLI tests run against a real `distill api` (one for the package, on the test
Postgres, Redis and a data directory of the package's: each test truncates the tables and flushes
Redis, so nothing one test leaves is seen by the next) and, where jobs must run, a real `distill
worker` (one per module that asks for it: the others count on no worker taking their jobs)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import REDIS_URL, make_key
from tests.factories.server import LiveApi, live_api
from tests.factories.worker import shared_dir_settings, start_worker, stop_worker


@pytest.fixture(scope="package")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client_data")


def _settings(pg_url: str, redis_db: int, data_dir: Path) -> Any:
    from app.settings import Settings

    return Settings(database_url=pg_url, broker_url=f"{REDIS_URL}/{redis_db}", data_dir=data_dir)


@pytest.fixture(scope="package")
def api(pg_url: str, redis_db: int, data_dir: Path) -> Iterator[LiveApi]:
    """A live `distill api` for the package (tests truncate the tables, not the process)."""
    with live_api(_settings(pg_url, redis_db, data_dir), data_dir / "api.log") as server:
        yield server


@pytest.fixture
def settings(pg_url: str, redis_db: int, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """As conftest's, on the package's data directory (shared with its API and workers)."""
    yield from shared_dir_settings(pg_url, redis_db, data_dir, monkeypatch)


@pytest.fixture
def api_key(settings: Any) -> str:
    """A fresh key of tenant `acme`."""
    return make_key(settings, "acme")["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def dc(api: LiveApi, api_key: str) -> Iterator[Any]:
    """A `distill_client.Client` of the live API."""
    from distill_client import Client

    with Client(api.url, api_key) as client:
        yield client


@pytest.fixture
def cli_env(api: LiveApi, api_key: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a user sets for the client commands (and no COLUMNS: wide tables)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    return {"DISTILL_API_URL": api.url, "DISTILL_API_KEY": api_key}


@pytest.fixture(scope="module")
def worker(pg_url: str, redis_db: int, data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `distill worker` for the module."""
    proc = start_worker(_settings(pg_url, redis_db, data_dir), log=data_dir / "worker.log",
                        DISTILL_RECONCILE_INTERVAL_S="3600", OMP_NUM_THREADS="1")
    yield proc
    stop_worker(proc)
