"""Worker tests share one data directory per module with the `distill worker` processes they start."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories.worker import shared_dir_settings, start_worker, stop_worker


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker_data")


@pytest.fixture
def settings(pg_url: str, redis_db: int, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """As conftest's, but one data directory for the module, shared with the worker process."""
    yield from shared_dir_settings(pg_url, redis_db, data_dir, monkeypatch)


@pytest.fixture
def worker(settings: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A real `distill worker` process on the test database and Redis (no reconciler passes)."""
    proc = start_worker(settings, DISTILL_RECONCILE_INTERVAL_S="3600")
    yield proc
    stop_worker(proc)
