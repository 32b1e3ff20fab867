"""A job's status and the groups of statuses the queue reasons about."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """`queued` → `running` → `succeeded` | `failed` | `cancelled`; `cancelling` while a running
    job stops (the contract's values)."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Owned by a worker (its lease is the heartbeat).
IN_PROGRESS = (JobStatus.RUNNING, JobStatus.CANCELLING)
# Not finished yet: the job still needs its files and models.
ACTIVE = (JobStatus.QUEUED, *IN_PROGRESS)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
