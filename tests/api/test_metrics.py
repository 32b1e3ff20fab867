"""`/metrics`: scraped from a live `distill api` without a key, requests counted per route
template (never an id), the queue read from the database at scrape time (jobs by status, the
oldest queued job's age), a cached reading between close scrapes, and the predict metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from app.jobs.tables import JobRow
from app.kit.db import session_scope
from tests.factories.api import job_body, sentiment_files, upload_model_dir
from tests.factories.server import live_api

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """`{(sample name, sorted labels): value}`."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def requests_by_handler(samples: Samples) -> dict[tuple[str, str, str], float]:
    return {(dict(labels)["method"], dict(labels)["handler"], dict(labels)["status"]): value
            for (name, labels), value in samples.items() if name == "http_requests_total"}


def jobs_gauge(samples: Samples) -> dict[str, float]:
    return {dict(labels)["status"]: value for (name, labels), value in samples.items()
            if name == "distill_jobs"}


def db_counts(settings: Any) -> dict[str, int]:
    with session_scope(settings.sqlalchemy_url) as session:
        rows = session.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
    return {status: count for status, count in rows}


def test_live_metrics_count_routes_by_template_and_read_the_queue(
    settings: Any, auth: dict[str, str], tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    with live_api(settings, tmp_path / "api.log", DISTILL_METRICS_CACHE_S="0") as api, \
            httpx.Client(base_url=api.url, timeout=60) as http:
        # Given requests on routes with ids in their paths, and three queued jobs
        for model_id in ("model-aaa", "model-bbb", "model-ccc"):
            assert http.get(f"/v1/models/{model_id}", headers=auth).status_code == 404
        assert http.post("/v1/models/model-aaa/predict", headers=auth,
                         json={"inputs": ["hi"]}).status_code == 404
        assert http.get("/v1/no/such/route").status_code == 404
        train_id, val_id = sentiment_files(http, auth, train=16, validation=8)
        teacher = upload_model_dir(http, auth, tiny_teacher_dir)["id"]
        body = job_body(teacher=teacher, training_file=train_id, validation_file=val_id)
        jobs = [http.post("/v1/distillation/jobs", headers=auth, json=body).json()["id"]
                for _ in range(3)]
        # ... one of which a worker has taken, and one of which has failed
        with session_scope(settings.sqlalchemy_url) as session:
            session.execute(update(JobRow).where(JobRow.id == jobs[0]).values(status="running"))
            session.execute(update(JobRow).where(JobRow.id == jobs[1]).values(status="failed"))

        # When Prometheus scrapes, with no key, twice a little apart
        first = http.get("/metrics")
        time.sleep(1.5)
        second = http.get("/metrics")

    # Then the scrape needs no key and is Prometheus' text format
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
    samples, later = parse(first.text), parse(second.text)
    # Requests are counted per route template, never per id, and /metrics is not counted
    counted = requests_by_handler(later)
    assert counted[("GET", "/v1/models/{model_id}", "4xx")] == 3
    assert counted[("POST", "/v1/models/{model_id}/predict", "4xx")] == 1
    assert counted[("GET", "none", "4xx")] == 1
    assert counted[("POST", "/v1/distillation/jobs", "2xx")] == 3
    assert not any("model-aaa" in handler or handler == "/metrics" for _, handler, _ in counted)
    latency = later[("http_request_duration_seconds_count",
                     (("handler", "/v1/models/{model_id}"), ("method", "GET")))]
    assert latency == 3
    # The jobs by status are the database's, every status listed
    assert jobs_gauge(samples) == {s: float(n) for s, n in {
        "queued": 0, "running": 0, "cancelling": 0, "succeeded": 0, "failed": 0, "cancelled": 0,
        **db_counts(settings)}.items()}
    assert jobs_gauge(samples)["queued"] == 1 and jobs_gauge(samples)["running"] == 1
    assert samples[("distill_jobs_metrics_up", ())] == 1
    # And the oldest queued job's age grows from one scrape to the next
    age, age_later = (s[("distill_queue_oldest_job_age_seconds", ())] for s in (samples, later))
    assert 0 < age < 300 and age_later >= age + 1.0


def test_a_reading_serves_close_scrapes_and_a_dead_database_does_not_hang_one(
    settings: Any, monkeypatch: Any) -> None:
    from app.jobs.metrics import JobsCollector
    from app.settings import get_settings

    # Given a collector whose reading is kept for a minute
    monkeypatch.setenv("DISTILL_METRICS_CACHE_S", "60")
    get_settings.cache_clear()
    collector = JobsCollector()
    first = collector.reading()
    assert first is not None and first.counts == {}
    # Then the next scrape reuses it, and reads again only once it has aged past the setting
    assert collector.reading() is first
    monkeypatch.setenv("DISTILL_METRICS_CACHE_S", "0")
    get_settings.cache_clear()
    assert collector.reading() is not first

    # Given a database that refuses connections, when a scrape comes
    monkeypatch.setenv("DISTILL_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:9/none")
    monkeypatch.setenv("DISTILL_METRICS_DB_TIMEOUT_S", "3")
    get_settings.cache_clear()
    started = time.monotonic()
    families = {f.name: f for f in collector.collect()}
    # Then it answers, in time, with the jobs metrics marked down rather than stale
    assert time.monotonic() - started < 10
    assert [s.value for s in families["distill_jobs_metrics_up"].samples] == [0]
    assert "distill_jobs" not in families


def test_predict_metrics_reach_the_scrape(client: Any) -> None:
    from app.inference.metrics import count_predict_request, observe_predict_batch, set_loaded_models

    def scrape() -> Samples:
        return parse(client.get("/metrics").text)

    before = scrape()
    # When the batcher reports two batches on onnx, one on a runtime it does not know, and the
    # cache holds three models
    observe_predict_batch("onnx", 8, 0.02)
    observe_predict_batch("onnx", 3, 0.5)
    observe_predict_batch("tensorrt", 1, 0.001)
    count_predict_request("onnx", "ok")
    count_predict_request("torch", "no-such-outcome")
    set_loaded_models(3)
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert grew("distill_predict_batch_size_count", runtime="onnx") == 2
    assert grew("distill_predict_batch_size_sum", runtime="onnx") == 11
    assert grew("distill_predict_batch_size_bucket", runtime="onnx", le="4.0") == 1
    assert round(grew("distill_predict_batch_seconds_sum", runtime="onnx"), 6) == 0.52
    assert grew("distill_predict_batch_seconds_bucket", runtime="onnx", le="0.025") == 1
    assert grew("distill_predict_batch_size_count", runtime="other") == 1
    assert grew("distill_predict_requests_total", runtime="onnx", outcome="ok") == 1
    assert grew("distill_predict_requests_total", runtime="torch", outcome="other") == 1
    assert after[("distill_loaded_models", ())] == 3


def test_served_predictions_are_counted_by_the_route(client: Any, auth: dict[str, str],
                                                     tiny_teacher_dir: Path) -> None:
    """Real predict calls (not the functions called by hand): batches, requests by outcome and
    the loaded models reach `/metrics` through the batcher's hook and the route."""
    model = upload_model_dir(client, auth, tiny_teacher_dir)["id"]
    before = parse(client.get("/metrics").text)

    # When two calls are served and one is refused for an empty `inputs`
    for text in ("good film", "bad film"):
        ok = client.post(f"/v1/models/{model}/predict", json={"inputs": [text]}, headers=auth)
        assert ok.status_code == 200, ok.text
    bad = client.post(f"/v1/models/{model}/predict", json={"inputs": []}, headers=auth)
    assert bad.status_code == 400
    after = parse(client.get("/metrics").text)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("distill_predict_requests_total", runtime="torch", outcome="ok") == 2
    assert grew("distill_predict_requests_total", runtime="other", outcome="invalid") == 1
    assert grew("distill_predict_batch_size_count", runtime="torch") == 2
    assert grew("distill_predict_batch_size_sum", runtime="torch") == 2
    assert after[("distill_loaded_models", ())] >= 1
