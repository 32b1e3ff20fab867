"""Where a job's wake-ups go: the queue routing chose at creation (`resources.py` estimates
and chooses), while it is still configured.

Kept free of the training core's imports: the worker's task module and the reconciler read it
before any job is claimed.
"""

from __future__ import annotations

from typing import Any

from app.jobs.queue_classes import DEFAULT_QUEUE
from app.jobs.tables import JobRow
from app.settings import Settings

__all__ = ["DEFAULT_QUEUE", "queue_for", "resources_view"]


def resources_view(job: JobRow) -> dict[str, Any]:
    """The job object's `resources`."""
    return {"estimated_memory_bytes": job.estimated_memory_bytes,
            "queue": job.queue or DEFAULT_QUEUE}


def queue_for(job: JobRow, *, settings: Settings) -> str:
    """Where the job's next wake-up goes: its queue while that is still configured, else (the
    classes changed since it was created) the smallest class that holds its estimate now, else
    the largest."""
    queues = settings.queue_classes
    names = {q.name for q in queues}
    if (job.queue or DEFAULT_QUEUE) in names:
        return job.queue or DEFAULT_QUEUE
    devices = int((job.request.get("hyperparameters") or {}).get("devices", 1))
    for queue in queues:
        if queue.holds(job.estimated_memory_bytes, devices):
            return queue.name
    return queues[-1].name
