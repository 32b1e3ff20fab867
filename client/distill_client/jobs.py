"""`client.jobs`: distillation jobs: create, follow, cancel, read their events."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from distill_client._http import Transport, query
from distill_client._stream import StreamItem, stream_job
from distill_client.errors import DistillError
from distill_client.types import Checkpoint, Job, JobEvent, Page


class WaitTimeoutError(DistillError, TimeoutError):
    """`jobs.wait` ran out of time; `job` is the job as last read."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.job = job
        super().__init__(f"Job {job.id} is still {job.status} after {timeout:g} s.")


class Jobs:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(self, request: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Create a job from the contract's request body (a dict, as in a JOB.json file).

        An `Idempotency-Key` (a new uuid4 unless given) goes with it and with each retry of it,
        so a create whose answer was lost and is sent again returns the first job, never a
        second one. Pass your own key to make a create safe to repeat across processes too.
        """
        key = idempotency_key or str(uuid.uuid4())
        body = self._t.request("POST", "/v1/distillation/jobs", json=dict(request),
                               headers={"Idempotency-Key": key}, idempotent=True)
        return Job.model_validate(body)

    def list(self, *, limit: int | None = None, after: str | None = None,
             status: str | None = None) -> Page[Job]:
        """The tenant's jobs, newest first."""
        params = query(limit=limit, after=after, status=status)
        return Page[Job].model_validate(
            self._t.request("GET", "/v1/distillation/jobs", params=params)).with_next(
            lambda last: self.list(limit=limit, after=last, status=status))

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._t.request("GET", f"/v1/distillation/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Cancel: `cancelled` at once if queued, `cancelling` while a worker stops it;
        `ConflictError` once it has finished."""
        return Job.model_validate(
            self._t.request("POST", f"/v1/distillation/jobs/{job_id}/cancel", idempotent=False))

    def events(self, job_id: str, *, after: str | None = None, limit: int | None = None
               ) -> Page[JobEvent]:
        """The job's events, oldest first; `after=<last event id>` returns only newer ones."""
        return Page[JobEvent].model_validate(self._t.request(
            "GET", f"/v1/distillation/jobs/{job_id}/events",
            params=query(after=after, limit=limit))).with_next(
            lambda last: self.events(job_id, after=last, limit=limit))

    def checkpoints(self, job_id: str) -> Page[Checkpoint]:
        """The checkpoints a running or interrupted job has saved, newest first."""
        return Page[Checkpoint].model_validate(
            self._t.request("GET", f"/v1/distillation/jobs/{job_id}/checkpoints"))

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 2.0) -> Job:
        """Poll until the job is succeeded, failed or cancelled and return it
        (`WaitTimeoutError` after `timeout` seconds; None waits as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(job, timeout or 0.0)
            pause = poll if deadline is None else min(poll, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def stream(self, job_id: str, *, poll: float = 1.0, max_reconnects: int = 5
               ) -> Iterator[StreamItem]:
        """Follow the job live: yields the `Job` (first, then on each change of status,
        progress or metrics) and each `JobEvent` (oldest first), and ends once the job is final.

        Uses the server-sent events stream, resuming after a dropped connection from the last
        event seen (`Last-Event-ID`); on a server without the stream it polls every `poll` s.
        """
        return stream_job(self._t, job_id, poll=poll, max_reconnects=max_reconnects)
