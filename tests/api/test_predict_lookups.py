"""The predict hot path's look-up memos (`DISTILL_LOOKUP_CACHE_S`): a call served from memory
touches no database, a revoked key and a deleted model stop answering within the TTL, the rate
limit still counts every call, and a key's last-used stamp is not a write per request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from typer.testing import CliRunner

from app.auth.service import list_keys
from app.kit.db import engine_for, session_scope
from distill_cli.main import cli
from tests.factories.api import assert_error, dir_members, make_key, tar_gz
from tests.factories.api import upload_archive as upload

BODY = {"inputs": ["a lovely film"]}


@contextmanager
def statements(settings: Any) -> Iterator[list[str]]:
    """The SQL statements this process sends to the test database meanwhile."""
    seen: list[str] = []
    engine = engine_for(settings.sqlalchemy_url)

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _ttl(monkeypatch: pytest.MonkeyPatch, seconds: float, **env: str) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_LOOKUP_CACHE_S", str(seconds))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


@pytest.fixture
def classifier(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> str:
    response = upload(client, auth, tar_gz(dir_members(tiny_teacher_dir)))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_call_served_from_memory_touches_no_database(
    client: Any, auth: dict[str, str], classifier: str, settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _ttl(monkeypatch, 60)
    url = f"/v1/models/{classifier}/predict"
    with statements(settings) as first:
        assert client.post(url, headers=auth, json=BODY).status_code == 200
    with statements(settings) as second:
        response = client.post(url, headers=auth, json=BODY)

    assert response.status_code == 200, response.text
    assert any("api_keys" in s for s in first) and any("models" in s for s in first)
    assert second == []


def test_a_revoked_key_stops_within_the_ttl(
    client: Any, auth: dict[str, str], classifier: str, settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a key whose tenant is remembered
    ttl = 1.0
    _ttl(monkeypatch, ttl)
    url = f"/v1/models/{classifier}/predict"
    assert client.post(url, headers=auth, json=BODY).status_code == 200

    # When it is revoked with `distill keys revoke`
    with session_scope(settings.sqlalchemy_url) as session:
        (key,) = list_keys(session=session, tenant_name="acme")
    key_id = key.id
    revoked = CliRunner().invoke(cli, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    time.sleep(ttl + 0.2)

    # Then once the TTL has passed it is refused, as any unknown key is
    assert_error(client.post(url, headers=auth, json=BODY), 401, code="invalid_api_key")


def test_a_deleted_model_stops_within_the_ttl(
    client: Any, auth: dict[str, str], classifier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = 1.0
    _ttl(monkeypatch, ttl)
    url = f"/v1/models/{classifier}/predict"
    assert client.post(url, headers=auth, json=BODY).status_code == 200

    assert client.delete(f"/v1/models/{classifier}", headers=auth).status_code == 200
    time.sleep(ttl + 0.2)
    # Past the TTL the registry answers: no such model (within it, the model still loaded in
    # memory may answer: the hot path touches neither the database nor the disk)
    assert_error(client.post(url, headers=auth, json=BODY), 404, code="not_found",
                 param="model_id")


def test_the_rate_limit_counts_calls_served_from_memory(
    client: Any, auth: dict[str, str], classifier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ttl(monkeypatch, 60, DISTILL_PREDICT_RATE_LIMIT_PER_MINUTE="3")
    url = f"/v1/models/{classifier}/predict"

    codes = [client.post(url, headers=auth, json=BODY).status_code for _ in range(3)]
    over = client.post(url, headers=auth, json=BODY)

    assert codes == [200, 200, 200]
    assert_error(over, 429, code="rate_limited")
    assert over.headers["Retry-After"]


def test_last_used_is_not_a_write_per_request(
    client: Any, auth: dict[str, str], classifier: str, settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a key never used, and no memo at all: every call authenticates against the database
    _ttl(monkeypatch, 0)
    url = f"/v1/models/{classifier}/predict"
    fresh = make_key(settings, "acme")

    with statements(settings) as seen:
        codes = [client.post(url, headers=fresh, json=BODY).status_code for _ in range(5)]

    # Then the key's last use is stamped once, not once per call
    assert codes == [200] * 5
    assert sum(s.lstrip().upper().startswith("UPDATE API_KEYS") for s in seen) == 1
    assert sum("api_keys" in s for s in seen) >= 5
