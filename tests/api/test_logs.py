"""Structured logs: a live `distill api` writes one JSON object a line, each line of a request
carrying its request id (the client's `X-Request-ID`, or a new one, echoed back) and, once the key
is checked, its tenant; and no API key reaches a line, whatever writes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from app.auth.tables import ApiKeyRow
from app.kit.db import session_scope
from tests.factories.api import make_key
from tests.factories.server import ROOT, live_api


def _json_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_request_lines_carry_the_request_id_and_the_tenant(settings: Any, tmp_path: Path) -> None:
    # Given a live API and a key of tenant acme
    auth = make_key(settings, "acme")
    with session_scope(settings.sqlalchemy_url) as session:
        tenant_id = session.query(ApiKeyRow).one().tenant_id
    log = tmp_path / "api.log"
    with live_api(settings, log) as api, httpx.Client(base_url=api.url) as http:
        # When one request sends its own id, one none, and one an id no log should hold as it is
        mine = http.get("/v1/files", headers={**auth, "X-Request-ID": "client-req-42"})
        theirs = http.get("/v1/models", headers=auth)
        forged = http.get("/v1/files", headers={**auth, "X-Request-ID": 'x"\\n{"level": "error'})
        anonymous = http.get("/v1/files", headers={"X-Request-ID": "no-key-1"})

    # Then each response echoes its id: the client's, or a new one
    assert mine.headers["X-Request-ID"] == "client-req-42"
    generated = theirs.headers["X-Request-ID"]
    assert len(generated) == 32 and generated != forged.headers["X-Request-ID"]
    assert forged.headers["X-Request-ID"] != 'x"\\n{"level": "error'
    # And the access log line of each has that id, and the tenant where the key was valid
    access = {line["request_id"]: line for line in _json_lines(log)
              if line["logger"] == "uvicorn.access"}
    assert access["client-req-42"]["tenant_id"] == tenant_id
    assert access["client-req-42"]["path"] == "/v1/files" and access["client-req-42"]["status"] == 200
    assert access[generated]["tenant_id"] == tenant_id and access[generated]["method"] == "GET"
    assert access[forged.headers["X-Request-ID"]]["tenant_id"] == tenant_id
    assert access["no-key-1"]["status"] == 401 and "tenant_id" not in access["no-key-1"]
    assert anonymous.status_code == 401


# Logged as a structlog field, as a %-argument of the standard library, and in a traceback.
_LOG_A_KEY = """
import logging, sys, structlog
from app.auth.logs import redact, redact_key_logs
from app.kit.logs import configure_logging
configure_logging("json", scrub=redact, stream=sys.stdout)
redact_key_logs()
key = "dsk_" + "Ab1_-" * 8
structlog.get_logger("tests").info("structlog event", api_key=key, nested={"k": [key]})
logging.getLogger("tests").warning("stdlib %s", key)
try:
    raise ValueError(f"bad id {key}")
except ValueError:
    logging.getLogger("tests").exception("failed")
"""


def test_no_key_in_json_lines_from_any_logger() -> None:
    out = subprocess.run([sys.executable, "-c", _LOG_A_KEY], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT)}).stdout
    lines = [json.loads(line) for line in out.splitlines()]

    assert "Ab1_-Ab1_" not in out
    assert [line["event"] for line in lines] == [
        "structlog event", "stdlib dsk_Ab1_…[redacted]", "failed"]
    assert lines[0]["api_key"] == "dsk_Ab1_…[redacted]"
    assert lines[0]["nested"] == {"k": ["dsk_Ab1_…[redacted]"]}
    assert "ValueError: bad id dsk_Ab1_…[redacted]" in lines[2]["exception"]
    assert all(line["level"] in ("info", "warning", "error") and line["timestamp"]
               for line in lines)
