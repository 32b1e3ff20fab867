"""The queue as Prometheus sees it, read from the jobs table when `/metrics` is scraped.

`distill_jobs{status}` and `distill_queue_oldest_job_age_seconds` describe the queue of record
(Postgres), so every API replica reports the same values: aggregate them with `max`, not `sum`.

Scrapes cannot hammer the database: one grouped query (on the `status` index) serves every scrape
for `metrics_cache_s`; at most one query is in flight at a time, in a thread of its own, under a
statement timeout; a scrape waits for it `metrics_db_timeout_s` at most and then answers without
the job metrics (`distill_jobs_metrics_up 0`) rather than hang. The age is computed at scrape time
from the cached creation time, so it grows between readings.

Stage durations and training throughput are the workers' metrics (`worker/metrics.py`): they are
observed once, when a job runs or finishes, where they happen; read back from reports at scrape
time they would need a query over every finished job, and each replica would repeat them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from app.jobs.status import JobStatus
from app.jobs.tables import JobRow
from app.kit.clock import now
from app.kit.db import engine_for
from app.settings import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobsReading:
    counts: dict[str, int]
    oldest_queued_created_at: float | None
    url: str
    read_at: float  # monotonic


def read_jobs(url: str, *, timeout_s: float) -> JobsReading:
    """Jobs by status and the creation time of the oldest queued one: one grouped query."""
    engine = engine_for(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                         {"ms": str(int(timeout_s * 1000))})
        rows = conn.execute(
            select(JobRow.status, func.count(), func.min(JobRow.created_at))
            .group_by(JobRow.status)).all()
    counts = {status: int(count) for status, count, _ in rows}
    oldest = next((float(first) for status, _, first in rows if status == JobStatus.QUEUED), None)
    return JobsReading(counts=counts, oldest_queued_created_at=oldest, url=url,
                       read_at=time.monotonic())


class JobsCollector(Collector):
    """Reads the jobs table at scrape time (cached, one query at a time, bounded wait)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: JobsReading | None = None
        self._in_flight: Future[JobsReading] | None = None

    def reading(self) -> JobsReading | None:
        """A reading at most `metrics_cache_s` old, or None when the database did not answer in
        time."""
        settings = get_settings()
        url = settings.sqlalchemy_url
        with self._lock:
            cached = self._cached
            if (cached is not None and cached.url == url
                    and time.monotonic() - cached.read_at < settings.metrics_cache_s):
                return cached
            if self._in_flight is None:
                self._in_flight = self._start(url, settings.metrics_db_timeout_s)
            future = self._in_flight
        try:
            reading = future.result(timeout=settings.metrics_db_timeout_s)
        except Exception as exc:  # a timeout or a database error: the scrape goes on without
            log.warning("metrics: no reading of the jobs table (%s: %s)", type(exc).__name__, exc)
            reading = None
        with self._lock:
            if future.done() and self._in_flight is future:
                self._in_flight = None
            if reading is not None and reading.url == url:
                self._cached = reading
        return reading

    @staticmethod
    def _start(url: str, timeout_s: float) -> Future[JobsReading]:
        # A daemon thread, not an executor: a query stuck on an unreachable host must not hold
        # the process's exit up.
        future: Future[JobsReading] = Future()

        def run() -> None:
            try:
                future.set_result(read_jobs(url, timeout_s=timeout_s))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="metrics-jobs-query", daemon=True).start()
        return future

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("distill_jobs_metrics_up",
                              "1 if the jobs table answered this scrape's reading in time."),
            GaugeMetricFamily("distill_jobs", "Jobs by status.", labels=["status"]),
            GaugeMetricFamily("distill_queue_oldest_job_age_seconds",
                              "Seconds since the oldest queued job was created (0: none queued)."),
        )

    def describe(self) -> Iterable[Metric]:
        # Names only: registering the collector must not query the database.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        reading = self.reading()
        up, jobs, age = self._families()
        up.add_metric([], 0 if reading is None else 1)
        yield up
        if reading is None:
            return
        for status in JobStatus:
            jobs.add_metric([status.value], reading.counts.get(status.value, 0))
        yield jobs
        oldest = reading.oldest_queued_created_at
        age.add_metric([], 0.0 if oldest is None else max(0.0, now() - oldest))
        yield age


_collector: JobsCollector | None = None
_install_lock = threading.Lock()


def install_jobs_collector() -> JobsCollector:
    """Register the collector in the process's registry (once, however many apps are built)."""
    global _collector
    with _install_lock:
        if _collector is None:
            _collector = JobsCollector()
            REGISTRY.register(_collector)
        return _collector
