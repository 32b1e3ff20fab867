"""Workers register what they can run when they start, beat while they live, and leave when they
stop; `distill workers` lists them.

In Postgres (the database of record), not Redis: the jobs a worker claims live there already,
an operator reads both with one query, and a row outlives a broker flush. A worker that died
without leaving keeps its row until its heartbeat is older than `stale_heartbeat_after_s`, when
`list_workers` stops counting it as alive (and `prune` removes it).
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from app.kit.clock import db_now
from app.workers.capabilities import Capabilities
from app.workers.tables import WorkerRow


def register(session: Session, *, worker_id: str, hostname: str, caps: Capabilities) -> None:
    """Insert (or, for a worker id seen before, replace) the worker's row."""
    session.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))
    session.execute(insert(WorkerRow).values(
        id=worker_id, hostname=hostname, device=caps.device, device_count=caps.device_count,
        memory_bytes=caps.memory_bytes, queues=list(caps.queues), started_at=db_now(),
        heartbeat_at=db_now()))


def beat(session: Session, *, worker_id: str) -> bool:
    """Refresh the worker's heartbeat; False when its row is gone (pruned while it was away)."""
    result = session.execute(update(WorkerRow).where(WorkerRow.id == worker_id)
                             .values(heartbeat_at=db_now()))
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def leave(session: Session, *, worker_id: str) -> None:
    session.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))


def list_workers(session: Session, *, alive_within_s: float) -> list[tuple[WorkerRow, bool]]:
    """Every registered worker, biggest first, with whether it beat within `alive_within_s`."""
    cutoff = session.scalar(select(db_now() - alive_within_s))
    rows = session.scalars(select(WorkerRow).order_by(WorkerRow.memory_bytes.desc(),
                                                      WorkerRow.id))
    return [(row, row.heartbeat_at >= (cutoff or 0.0)) for row in rows]


def prune(session: Session, *, older_than_s: float) -> int:
    """Remove workers silent for `older_than_s`; how many."""
    result = session.execute(delete(WorkerRow).where(WorkerRow.heartbeat_at
                                                     < db_now() - older_than_s))
    return int(result.rowcount)  # type: ignore[attr-defined]
