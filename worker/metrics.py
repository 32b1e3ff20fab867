"""A worker's Prometheus metrics: training throughput, stage durations, jobs finished.

Jobs run in the pool's child processes (a fresh one per job), which live for one job only, so the
metrics use prometheus-client's multiprocess mode: each process writes its values to files in
`PROMETHEUS_MULTIPROC_DIR` (set up by `distill worker`, before anything imports the client), and
the worker's main process serves the sum of them on `DISTILL_WORKER_METRICS_PORT`. Counters and
histograms of finished job processes are kept (that is what makes `rate()` work); the
samples/s gauge counts live processes only.

Stage durations are observed once per succeeded job from its report's `stage_seconds` (this
attempt's own time per stage), with the stage label limited to the engine's stages.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import multiprocess as prometheus_multiprocess

from app.settings import Settings
from distillation.config import Progress, Reporter

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The folder `distill worker` makes for its job processes' metrics when none is named.
METRICS_DIR_PREFIX = "distill-worker-metrics-"
STAGES = ("prepare_data", "load_teacher", "finetune_teacher", "generate_data", "plan_student",
          "cache_teacher", "distill", "evaluate", "export")
TRAINING_STAGES = ("finetune_teacher", "distill")  # the stages that take optimizer steps
OUTCOMES = ("succeeded", "failed", "cancelled", "interrupted")

JOBS_FINISHED = Counter(
    "distill_worker_jobs_finished", "Job attempts this worker ended, by outcome (interrupted: "
    "handed back or taken over, to go on in another attempt).", ["outcome"])
JOB_SECONDS = Histogram(
    "distill_worker_job_seconds", "Wall-clock seconds of a job attempt, claim to outcome.",
    ["outcome"], buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800))
STAGE_SECONDS = Histogram(
    "distill_worker_stage_seconds", "Seconds a succeeded job's attempt spent in each stage.",
    ["stage"], buckets=(0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400))
TRAINING_STEPS = Counter(
    "distill_worker_training_steps", "Optimizer steps taken, by stage.", ["stage"])
TRAINING_SAMPLES = Counter(
    "distill_worker_training_samples",
    "Training examples the student has seen in the distill stage (steps x effective batch size).")
SAMPLES_PER_SECOND = Gauge(
    "distill_worker_training_samples_per_second",
    "Examples per second of the running distill stages, between their last two progress reports.",
    multiprocess_mode="livesum")


def _stage(name: str) -> str:
    return name if name in STAGES else "other"


def observe_stage_seconds(report: dict[str, Any]) -> None:
    """A succeeded job's `report["stage_seconds"]`, one observation per stage."""
    for stage, seconds in (report.get("stage_seconds") or {}).items():
        if isinstance(seconds, int | float):
            STAGE_SECONDS.labels(_stage(stage)).observe(seconds)


def job_ended(outcome: str | None, seconds: float) -> None:
    """A claimed job's attempt ended with `outcome` (the final status, or None: interrupted)."""
    label = outcome if outcome in OUTCOMES else "interrupted"
    JOBS_FINISHED.labels(label).inc()
    JOB_SECONDS.labels(label).observe(seconds)
    SAMPLES_PER_SECOND.set(0)


class MeteredReporter:
    """The job's reporter, with its progress reports counted on the way through: steps per
    training stage, and the distill stage's examples (each step is `samples_per_step`)."""

    def __init__(self, inner: Reporter, *, samples_per_step: int) -> None:
        self.inner = inner
        self.samples_per_step = samples_per_step
        self._last: dict[str, tuple[int, float]] = {}  # stage -> (step, monotonic time)

    def progress(self, progress: Progress) -> None:
        self._count(progress)
        self.inner.progress(progress)

    def _count(self, progress: Progress) -> None:
        stage = progress.stage
        if stage not in TRAINING_STAGES:
            SAMPLES_PER_SECOND.set(0)
            return
        t = time.monotonic()
        last = self._last.get(stage)
        self._last[stage] = (progress.step, t)
        # The first report is the baseline: an attempt that resumed starts past step 0.
        if last is None or progress.step <= last[0]:
            return
        steps = progress.step - last[0]
        TRAINING_STEPS.labels(stage).inc(steps)
        if stage == "distill":
            TRAINING_SAMPLES.inc(steps * self.samples_per_step)
            if t > last[1]:
                SAMPLES_PER_SECOND.set(steps * self.samples_per_step / (t - last[1]))

    def metrics(self, step: int, data: dict[str, Any]) -> None:
        self.inner.metrics(step, data)

    def flush(self) -> None:
        self.inner.flush()

    def message(self, text: str, *, level: str = "info",
                data: dict[str, Any] | None = None) -> None:
        self.inner.message(text, level=level, data=data)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    def should_pause(self) -> bool:
        return self.inner.should_pause()


def serve(port: int) -> Any:
    """Serve this worker's metrics (its job processes' included) on `port`; returns the server."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        prometheus_multiprocess.MultiProcessCollector(registry)
    else:  # started without `distill worker`: the job processes' metrics are not collected
        log.warning("%s is not set: the worker's metrics leave out its job processes",
                    MULTIPROC_ENV)
        from prometheus_client import REGISTRY

        registry = REGISTRY
    server, _thread = start_http_server(port, registry=registry)
    log.info("worker metrics on port %d", port)
    return server


def process_exited(pid: int) -> None:
    """Forget a finished job process's live gauges (its counters and histograms stay)."""
    if os.environ.get(MULTIPROC_ENV):
        prometheus_multiprocess.mark_process_dead(pid)


def worker_metrics_env(settings: Settings) -> dict[str, str]:
    """The environment a worker whose metrics are served needs: `PROMETHEUS_MULTIPROC_DIR`, where
    its job processes write their metrics. A folder of its own, or the one given, emptied: values
    left by an earlier run would be added to this one's."""
    if not settings.worker_metrics_port:
        return {}
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX))
    return {MULTIPROC_ENV: str(path)}
