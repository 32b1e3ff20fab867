"""The lean predict route reads its own key and body (no dependency solving): what the declared
parameters used to promise still holds. A missing, malformed or unknown key is a 401 in the
contract's error shape; a revoked key answers from memory within `DISTILL_LOOKUP_CACHE_S` and
is refused after it; another tenant's model is a 404; a bad body is the 422 it was; the
predict and HTTP metrics still count; and predict has a rate limit of its own, apart from the
control plane's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from app.auth.service import list_keys
from app.kit.db import session_scope
from app.kit.metrics import render_metrics
from distill_cli.main import cli
from tests.factories.api import assert_error, dir_members, tar_gz
from tests.factories.api import upload_archive as upload

BODY = {"inputs": ["a lovely film"]}


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    from app.settings import get_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


@pytest.fixture
def url(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> str:
    response = upload(client, auth, tar_gz(dir_members(tiny_teacher_dir)))
    assert response.status_code == 201, response.text
    return f"/v1/models/{response.json()['id']}/predict"


def sample(name: str, **labels: str) -> float:
    """A sample's value in this process's `/metrics` text (0 when absent)."""
    for family in text_string_to_metric_families(render_metrics().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_a_missing_malformed_or_unknown_key_is_a_401(client: Any, url: str) -> None:
    missing = client.post(url, json=BODY)
    malformed = client.post(url, headers={"Authorization": "Basic abc"}, json=BODY)
    unknown = client.post(url, headers={"Authorization": "Bearer dsk_nope"}, json=BODY)

    assert "Missing API key" in assert_error(missing, 401, code="invalid_api_key")["message"]
    assert "Malformed" in assert_error(malformed, 401, code="invalid_api_key")["message"]
    assert_error(unknown, 401, code="invalid_api_key")


def test_a_revoked_key_answers_from_memory_within_the_ttl_and_is_refused_after(
    client: Any, auth: dict[str, str], url: str, settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a key whose tenant is remembered for 3 s
    ttl = 3.0
    configure(monkeypatch, DISTILL_LOOKUP_CACHE_S=str(ttl))
    assert client.post(url, headers=auth, json=BODY).status_code == 200
    remembered_at = time.monotonic()

    # When it is revoked
    with session_scope(settings.sqlalchemy_url) as session:
        (key,) = list_keys(session=session, tenant_name="acme")
    key_id = key.id
    assert CliRunner().invoke(cli, ["keys", "revoke", key_id]).exit_code == 0

    # Then within the TTL the memo answers (the hot path reads no database) ...
    within = client.post(url, headers=auth, json=BODY)
    assert time.monotonic() - remembered_at < ttl, "too slow to observe the memo"
    assert within.status_code == 200
    # ... and once it has passed the key is refused as an unknown one is
    time.sleep(max(0.0, ttl - (time.monotonic() - remembered_at)) + 0.2)
    assert_error(client.post(url, headers=auth, json=BODY), 401, code="invalid_api_key")


def test_another_tenants_model_is_a_404(
    client: Any, url: str, other_auth: dict[str, str]
) -> None:
    assert_error(client.post(url, headers=other_auth, json=BODY), 404, code="not_found",
                 param="model_id")


@pytest.mark.parametrize(("content", "content_type", "code", "param"), [
    (b'{"inputs": ["a"', "application/json", "invalid_json", None),
    (b"", "application/json", "invalid_request", None),
    (b'{"inputs": ["a"]}', "text/plain", "invalid_request", None),
    (b'{"inputs": "a"}', "application/json", "invalid_request", "inputs"),
    (b'{"inputs": ["a"], "max_new_tokens": 0}', "application/json", "invalid_request",
     "max_new_tokens"),
    (b'{"inputs": ["a"], "runtime": "tpu"}', "application/json", "invalid_request", "runtime"),
])
def test_a_bad_body_is_the_422_of_a_declared_body(
    client: Any, auth: dict[str, str], url: str, content: bytes, content_type: str, code: str,
    param: str | None,
) -> None:
    response = client.post(url, headers={**auth, "Content-Type": content_type}, content=content)

    error = assert_error(response, 422, code=code)
    assert error["param"] == param


def test_a_nul_in_the_model_id_is_a_400(client: Any, auth: dict[str, str]) -> None:
    assert_error(client.post("/v1/models/model-a%00b/predict", headers=auth, json=BODY), 400,
                 param="model_id")


def test_predict_is_counted_in_the_metrics(
    client: Any, auth: dict[str, str], url: str
) -> None:
    template = "/v1/models/{model_id}/predict"
    before = (sample("distill_predict_requests_total", outcome="ok"),
              sample("http_requests_total", handler=template, method="POST", status="2xx"),
              sample("http_request_duration_seconds_count", handler=template, method="POST"),
              sample("distill_predict_batch_size_count"))

    assert all(client.post(url, headers=auth, json=BODY).status_code == 200 for _ in range(3))
    after = (sample("distill_predict_requests_total", outcome="ok"),
             sample("http_requests_total", handler=template, method="POST", status="2xx"),
             sample("http_request_duration_seconds_count", handler=template, method="POST"),
             sample("distill_predict_batch_size_count"))

    assert [b - a for a, b in zip(before, after, strict=True)][:3] == [3, 3, 3]
    assert after[3] - before[3] >= 1  # batches: 1 to 3 of them


def test_predict_and_the_control_plane_have_budgets_of_their_own(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 2 control-plane requests and 3 predict calls a minute per key
    configure(monkeypatch, DISTILL_RATE_LIMIT_PER_MINUTE="2",
              DISTILL_PREDICT_RATE_LIMIT_PER_MINUTE="3")

    # When one key spends its control-plane budget
    plane = [client.get("/v1/files", headers=auth).status_code for _ in range(3)]
    # Then its predict calls still go through, up to their own limit, then 429 with Retry-After
    calls = [client.post(url, headers=auth, json=BODY).status_code for _ in range(3)]
    over = client.post(url, headers=auth, json=BODY)

    assert plane == [200, 200, 429]
    assert calls == [200, 200, 200]
    error = assert_error(over, 429, code="rate_limited")
    assert "DISTILL_PREDICT_RATE_LIMIT_PER_MINUTE" in error["message"]
    assert 1 <= int(over.headers["Retry-After"]) <= 20  # one call at 3 a minute: 20 s at most

    # And the other way round: a key that spent its predict budget keeps its control plane
    spent = [client.post(url, headers=other_auth, json=BODY).status_code for _ in range(4)]
    assert spent == [404, 404, 404, 429]  # another tenant's model: counted all the same
    assert client.get("/v1/files", headers=other_auth).status_code == 200
