"""API keys: `distill keys list` / `revoke`, revocation at once, and no key in any log line."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from distill_cli.main import cli
from tests.factories.api import assert_error, make_key
from tests.factories.server import ROOT, distill_env, live_api


def _secret(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _listed(output: str) -> dict[str, list[str]]:
    """`distill keys list` rows by key prefix: [id, prefix, created, last used, revoked]."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in output.splitlines()[1:]]
    return {row[1].rstrip("…"): row for row in rows}


def test_list_and_revoke(client: Any, settings: Any) -> None:
    # Given two keys of acme, one of them used once
    runner = CliRunner()
    used, idle = make_key(settings, "acme"), make_key(settings, "acme")
    assert client.get("/v1/files", headers=used).status_code == 200

    # When the keys are listed
    listing = runner.invoke(cli, ["keys", "list", "--tenant", "acme"])

    # Then each shows its id, prefix, creation and use, and never the secret
    assert listing.exit_code == 0, listing.output
    rows = _listed(listing.output)
    assert set(rows) == {_secret(used)[:8], _secret(idle)[:8]}
    used_row, idle_row = rows[_secret(used)[:8]], rows[_secret(idle)[:8]]
    assert used_row[0].startswith("key-") and used_row[3] != "-" and used_row[4] == "-"
    assert idle_row[3] == "-"
    assert _secret(used) not in listing.output and _secret(idle) not in listing.output

    # When the used key is revoked: its next request is a 401, the other key still works
    revoked = runner.invoke(cli, ["keys", "revoke", used_row[0]])
    assert revoked.exit_code == 0, revoked.output
    assert_error(client.get("/v1/files", headers=used), 401, code="invalid_api_key")
    assert client.get("/v1/files", headers=idle).status_code == 200
    after = _listed(runner.invoke(cli, ["keys", "list", "--tenant", "acme"]).output)
    assert after[_secret(used)[:8]][4] != "-" and after[_secret(idle)[:8]][4] == "-"

    # And revoking it again says so; unknown ids and tenants are errors
    again = runner.invoke(cli, ["keys", "revoke", used_row[0]])
    assert again.exit_code == 0 and "already revoked" in again.output
    assert runner.invoke(cli, ["keys", "revoke", "key-nope"]).exit_code == 1
    assert runner.invoke(cli, ["keys", "list", "--tenant", "nobody"]).exit_code == 1


def test_revoked_and_unknown_keys_answer_alike(client: Any, settings: Any) -> None:
    from app.auth.service import list_keys, revoke_key
    from app.kit.db import session_scope

    headers = make_key(settings, "acme")
    with session_scope(settings.sqlalchemy_url) as session:
        revoke_key(session=session, key_id=list_keys(session=session, tenant_name="acme")[0].id)

    revoked = client.get("/v1/files", headers=headers)
    unknown = client.get("/v1/files", headers={"Authorization": "Bearer dsk_" + "x" * 43})

    assert_error(revoked, 401, code="invalid_api_key")
    assert revoked.json() == unknown.json()


def test_no_key_in_any_log_line(settings: Any, tmp_path: Path) -> None:
    # Given a key made by `distill keys create` and a live `distill api` logging every request
    env = distill_env(settings)
    created = subprocess.run([sys.executable, "-m", "distill_cli", "keys", "create", "--tenant", "acme"],
                             env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    key = created.stdout.split()[-1]
    log = tmp_path / "api.log"
    with live_api(settings, log) as api, httpx.Client(base_url=api.url) as http:
        auth = {"Authorization": f"Bearer {key}"}
        # When the key is used as it should be, and where clients put it by mistake
        # (the URL's query and path, which the access log records), and changed by one letter
        assert http.get("/v1/files", headers=auth).status_code == 200
        assert http.get(f"/v1/files?api_key={key}", headers=auth).status_code == 200
        assert http.get(f"/v1/files/{key}", headers=auth).status_code == 404
        assert http.get("/v1/models", headers={"Authorization": f"Bearer {key}x"}).status_code == 401
        listing = subprocess.run([sys.executable, "-m", "distill_cli", "keys", "list", "--tenant",
                                  "acme"], env=env, cwd=ROOT, capture_output=True, text=True)
    logged = log.read_text()
    lines = [json.loads(line) for line in logged.splitlines()]  # one JSON object a line

    # Then the log has a line for each request, and none of them holds the key
    access = [line for line in lines
              if line["logger"] == "uvicorn.access" and line["path"].startswith("/v1/")]
    assert [line["status"] for line in access] == [200, 200, 404, 401], access
    assert access[1]["path"] == f"/v1/files?api_key={key[:8]}…[redacted]"
    assert access[2]["path"] == f"/v1/files/{key[:8]}…[redacted]"
    assert all(line["request_id"] for line in access)
    assert key not in logged
    assert key not in created.stderr
    assert key not in listing.stdout + listing.stderr and key[:8] in listing.stdout


def test_redaction_covers_tracebacks(caplog: Any) -> None:
    from app.auth.logs import RedactKeys

    key = "dsk_" + "Ab1_-" * 8
    logger = logging.getLogger("tests.keys")
    caplog.handler.addFilter(RedactKeys())
    try:
        raise ValueError(f"bad id {key}")
    except ValueError:
        logger.exception("failed for %s", key)

    assert key not in caplog.text
    assert caplog.text.count("dsk_Ab1_…[redacted]") == 2
