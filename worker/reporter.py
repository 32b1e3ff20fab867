"""A `Reporter` for the training core that writes progress, metrics and events to the job row.

Every write is fenced by the worker's lease (`lifecycle.require`): a worker whose job was taken
over (re-queued by the reconciler, claimed by another worker) has the write refused, and the
refusal stops its run there and then (`Cancelled`), before it trains another step or writes
another file. A heartbeat thread keeps the lease fresh and notices `cancelling` (or a lost lease)
within `heartbeat_interval_s`, even while the core is inside a long step.

Progress, metrics and events are telemetry: each write is retried through a database outage
(`db_write_retry_s`), and one that still fails is logged and counted, never raised into the
training core, so an outage cannot fail a healthy job. The count is reported in a warning event
once the database answers again.

Metrics are batched: a step's metrics event waits until `metrics_write_interval_s` has passed
since the last metrics write, then every waiting event goes in one transaction (with
`log_every_steps: 1` a step is not a transaction). Evaluation metrics, any other event and the end
of the run (`flush`) write the waiting ones first, so the events keep their order.

`pause()` (the worker is shutting down) asks the core for a checkpoint at its next optimizer
step and a stop there; outside the distill stage, which is the one that checkpoints, it stops
at once.

Fault tests may hold a job at a step until they release it (`step_hold`, off unless a test's
environment turns it on).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.jobs import lifecycle, repository
from app.jobs.lifecycle import Lease, LeaseLost
from app.jobs.status import JobStatus
from app.kit.db import session_scope
from app.settings import Settings
from distillation.config import Cancelled, Progress
from worker import step_hold
from worker.db_retry import write_with_retry

log = logging.getLogger(__name__)

# Why a run stops, strongest first: a worker that lost its lease writes nothing more, whatever
# else was asked of it.
LEASE_LOST, CANCELLED, SHUTDOWN = "lease_lost", "cancelled", "shutdown"
_PRECEDENCE = (LEASE_LOST, CANCELLED, SHUTDOWN)
CHECKPOINTED_STAGE = "distill"


def eval_view(data: dict[str, Any]) -> dict[str, Any]:
    """The job's `metrics.eval`: the core's `eval_*` keys without the prefix
    (`eval_accuracy` → `accuracy`, `teacher_eval_accuracy` → `teacher_accuracy`)."""
    return {k.replace("eval_", ""): v for k, v in data.items() if "eval_" in k}


class DbReporter:
    """Reports a running job into the database; `should_stop()` turns true on cancel or a lost
    lease, `should_pause()` once the worker is shutting down."""

    def __init__(self, *, settings: Settings, lease: Lease,
                 metrics: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.lease = lease
        self.job_id = lease.job_id
        self.metrics_state: dict[str, Any] = metrics or {"train_loss": None, "eval": {}}
        self.stop_reason: str | None = None  # LEASE_LOST | CANCELLED | SHUTDOWN
        self._stopped = threading.Event()  # stop at once
        self._pausing = threading.Event()  # checkpoint at the next step, then stop
        self._closing = threading.Event()
        self._last_progress_write = 0.0
        self._last_metrics_write = 0.0
        self._pending_metrics: list[tuple[str, dict[str, Any]]] = []  # (message, data) each
        self._last_stage: str | None = None
        self.train_progress: dict[str, Any] = {}  # the distill stage's last step counters
        self.lost_writes = 0  # writes given up on during an outage, not yet reported
        self._hold = step_hold.HOLD  # a fault test's hold; None outside tests
        # In the job's context: its log lines name the job and the attempt.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._beat,),
                                        name=f"heartbeat-{self.job_id}", daemon=True)

    def __enter__(self) -> DbReporter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closing.set()
        self._thread.join(timeout=10)

    @property
    def lease_lost(self) -> bool:
        return self.stop_reason == LEASE_LOST

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None or _PRECEDENCE.index(reason) < _PRECEDENCE.index(
                self.stop_reason):
            self.stop_reason = reason
        (self._pausing if reason == SHUTDOWN else self._stopped).set()

    def pause(self) -> None:
        """The worker is shutting down: checkpoint at the next optimizer step and stop."""
        self._stop(SHUTDOWN)

    def _beat(self) -> None:
        while not self._closing.wait(self.settings.heartbeat_interval_s):
            try:
                with session_scope(self.settings.sqlalchemy_url) as session:
                    status = lifecycle.heartbeat(session, self.lease)
            except Exception:
                log.warning("heartbeat for %s failed", self.job_id, exc_info=True)
                continue
            if status is None:
                log.warning("job %s: lease of attempt %d lost; stopping", self.job_id,
                            self.lease.attempt)
                self._stop(LEASE_LOST)
                return
            if status == JobStatus.CANCELLING:
                self._stop(CANCELLED)

    # Reporter protocol -------------------------------------------------------------------
    def should_stop(self) -> bool:
        return self._stopped.is_set() or (
            self._pausing.is_set() and self._last_stage != CHECKPOINTED_STAGE)

    def should_pause(self) -> bool:
        return self._pausing.is_set() and not self._stopped.is_set()

    def progress(self, progress: Progress) -> None:
        if progress.stage == "distill":
            self.train_progress = asdict(progress)
        t = time.monotonic()
        new_stage = progress.stage != self._last_stage
        # At most one write a second, but never miss a stage change or the end of a stage.
        if not new_stage and progress.percent < 100 and t - self._last_progress_write < 1.0:
            return
        self._last_progress_write = t
        stage = progress.stage

        if new_stage:
            self.flush()  # the stage's metrics before its end

        def write(session: Session) -> None:
            lifecycle.require(session, self.lease, progress=asdict(progress))
            if new_stage:
                repository.add_event(session, job_id=self.job_id,
                                     message=f"Stage {stage} started.", data={"stage": stage})

        self._write(f"progress ({stage})", write)
        self._last_stage = progress.stage

    def metrics(self, step: int, data: dict[str, Any]) -> None:
        eval_metrics = eval_view(data)
        if "train_loss" in data:
            self.metrics_state["train_loss"] = data["train_loss"]
        if eval_metrics:
            self.metrics_state["eval"] = {**self.metrics_state.get("eval", {}), **eval_metrics}
        summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in data.items() if k != "step")
        # Every metrics event carries `step` and `train_loss` (the latest one for an eval event).
        event_data = {"step": step, "train_loss": self.metrics_state.get("train_loss"), **data}
        self._pending_metrics.append((f"step {step}: {summary}", event_data))
        due = (time.monotonic() - self._last_metrics_write
               >= self.settings.metrics_write_interval_s)
        if eval_metrics or due:
            self._write_metrics()
        if (self._hold is not None and self._last_stage == CHECKPOINTED_STAGE
                and "learning_rate" in data and self._hold.due(step)):
            self._hold_at(step, self._hold)

    def _hold_at(self, step: int, hold: step_hold.StepHold) -> None:
        """A fault test's hold (`step_hold`): this step's metrics and progress written, wait for
        the test's release, a stop or a pause; once a run."""
        self._hold = None
        self.flush()
        total = max(1, int(self.train_progress.get("total_steps") or step))
        progress = {**self.train_progress, "step": step,
                    "percent": round(min(100.0, 100.0 * step / total), 2)}
        self._write(f"progress (held at step {step})",
                    lambda session: lifecycle.require(session, self.lease, progress=progress))
        log.warning("job %s: held at step %d until %s exists (test hook)", self.job_id, step,
                    hold.release)
        hold.wait(lambda: self._stopped.is_set() or self._pausing.is_set())

    def flush(self) -> None:
        """Write the metrics events still waiting (before another event, or at the run's end)."""
        if self._pending_metrics:
            self._write_metrics()

    def _write_metrics(self) -> None:
        batch, self._pending_metrics = self._pending_metrics, []
        self._last_metrics_write = time.monotonic()
        state = {**self.metrics_state}

        def write(session: Session) -> None:
            lifecycle.require(session, self.lease, metrics=state)
            for message, data in batch:
                repository.add_event(session, job_id=self.job_id, type="metrics",
                                     message=message, data=data)

        steps = f"{batch[0][1]['step']}" if len(batch) == 1 else (
            f"{batch[0][1]['step']}-{batch[-1][1]['step']}")
        self._write(f"metrics (step {steps})", write, events=len(batch))

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self.flush()

        def write(session: Session) -> None:
            lifecycle.require(session, self.lease)
            repository.add_event(session, job_id=self.job_id, message=text, level=level,
                                 data=data)

        self._write("event", write)

    def _write(self, what: str, work: Callable[[Session], object], *, events: int = 1) -> None:
        """One telemetry write of the lease's owner, retried through an outage; given up (and
        its `events` counted as lost) after that. A refused write stops the run (`Cancelled`)."""
        if self.lease_lost:
            raise Cancelled("the job is no longer this worker's")
        try:
            write_with_retry(self.settings.sqlalchemy_url, work,
                             within_s=self.settings.db_write_retry_s)
        except LeaseLost:
            log.warning("job %s: %s refused, attempt %d no longer owns the job; stopping",
                        self.job_id, what, self.lease.attempt)
            self._stop(LEASE_LOST)
            raise Cancelled("the job is no longer this worker's") from None
        except SQLAlchemyError:
            self.lost_writes += events
            log.error("job %s: gave up writing %s after %.0f s of database errors; training "
                      "goes on", self.job_id, what, self.settings.db_write_retry_s, exc_info=True)
            return
        if self.lost_writes:
            self._report_lost_writes()

    def _report_lost_writes(self) -> None:
        lost, self.lost_writes = self.lost_writes, 0

        def write(session: Session) -> None:
            lifecycle.require(session, self.lease)
            repository.add_event(
                session, job_id=self.job_id, level="warning",
                message=f"{lost} progress or event write(s) were lost during a database "
                        "outage; training went on.", data={"lost_writes": lost})

        try:
            with session_scope(self.settings.sqlalchemy_url) as session:
                write(session)
        except LeaseLost:
            self._stop(LEASE_LOST)
        except SQLAlchemyError:
            self.lost_writes += lost
