"""schemathesis against the live `/openapi.json` of a real `distill api`, with a valid key: no
5xx and no response that breaks the schema (body, status code, content type).

Path ids are either generated or, half the time, the ids of a seeded tenant's real file, job and
model, so the cases get past the 404 to the code behind it. The default run is bounded (a few
examples per cheap operation); `pytest -m slow` runs every operation at full size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories.api import REDIS_URL, job_body, make_key, sentiment_files, upload_model_dir
from tests.factories.server import live_api

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
PATH_IDS = {"file_id": "file", "job_id": "job", "model_id": "model"}
HYPOTHESIS = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}


@dataclass
class Live:
    url: str
    auth: dict[str, str]
    ids: dict[str, str]
    statuses: Counter[int] = field(default_factory=Counter)
    examples: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def live(pg_url: str, redis_db: int, tmp_path_factory: pytest.TempPathFactory,
         tiny_teacher_dir: Path) -> Iterator[Live]:
    """A live API on the test database, with tenant acme's file, model and queued job."""
    from app.settings import get_settings
    from tests.conftest import _truncate_all

    data = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DISTILL_DATABASE_URL", pg_url)
        env.setenv("DISTILL_BROKER_URL", f"{REDIS_URL}/{redis_db}")
        env.setenv("DISTILL_DATA_DIR", str(data / "data"))
        get_settings.cache_clear()
        _truncate_all(pg_url)
        config = get_settings()
        auth = make_key(config, "acme")
        with live_api(config, data / "api.log") as api, \
                httpx.Client(base_url=api.url, timeout=120) as http:
            ids = _seed(http, auth, tiny_teacher=tiny_teacher_dir)
            live = Live(url=api.url, auth=auth, ids=ids)
            yield live
        get_settings.cache_clear()
    print(f"\nschemathesis: {live.statuses.total()} requests over {len(live.examples)} "
          f"operations, by status {dict(sorted(live.statuses.items()))}")


def _seed(http: httpx.Client, auth: dict[str, str], *, tiny_teacher: Path) -> dict[str, str]:
    train, validation = sentiment_files(http, auth, train=16, validation=8)
    model = upload_model_dir(http, auth, tiny_teacher)["id"]
    job = http.post("/v1/distillation/jobs", headers=auth,
                    json=job_body(teacher=model, training_file=train, validation_file=validation))
    assert job.status_code == 201, job.text
    return {"file": train, "model": model, "job": job.json()["id"]}


def _fuzz(live: Live, *, max_examples: int, skip: frozenset[str] = frozenset()) -> None:
    """Every operation of the live schema but `skip`; one report of all failures at the end."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    # Deletes and cancels last, so that the other operations meet the seeded objects alive.
    operations = sorted((result.ok() for result in schema.get_all_operations()),
                        key=lambda op: op.method.upper() == "DELETE" or op.path.endswith("/cancel"))
    failures = [failure for operation in operations if operation.label not in skip
                if (failure := _fuzz_operation(live, operation, max_examples=max_examples))]
    assert len(live.examples) >= 10, live.examples
    assert not failures, "\n\n".join(failures)


def _fuzz_operation(live: Live, operation: Any, *, max_examples: int) -> str | None:
    """Positive and negative cases for one operation; the failure (shrunk), if any."""
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))

    @given(case=cases, data=st.data())
    @settings(max_examples=max_examples, **HYPOTHESIS)
    def run(case: Any, data: Any) -> None:
        for name in case.path_parameters or {}:
            if name in PATH_IDS and data.draw(st.booleans(), label=f"real {name}"):
                case.path_parameters[name] = live.ids[PATH_IDS[name]]
        response = case.call(base_url=live.url, headers=live.auth)
        live.statuses[response.status_code] += 1
        live.examples[operation.label] += 1
        case.validate_response(response, checks=CHECKS, headers=live.auth)

    try:
        run()
    except Exception as exc:
        return f"{operation.label}: {exc}"
    return None


# Uploading and unpacking model archives and running a model cost seconds per case: the full
# run covers them.
EXPENSIVE = frozenset({"POST /v1/models", "POST /v1/models/{model_id}/predict"})


def test_api_bounded(live: Live) -> None:
    _fuzz(live, max_examples=5, skip=EXPENSIVE)


@pytest.mark.slow
def test_api_full(live: Live) -> None:
    _fuzz(live, max_examples=200)
