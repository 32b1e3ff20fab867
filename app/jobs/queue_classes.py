"""The classes of training workers (`DISTILL_WORKER_QUEUES`): a queue's name, the memory per
device of the workers that consume it, and how many devices each of them has.

`small=8GiB,large=80GiBx4` is two queues: `small`, for workers with 8 GiB per device (one device),
and `large`, for workers with four devices of 80 GiB. Sizes are pydantic `ByteSize` strings
(`8GiB`, `80GB`, `512MiB`, or bytes). Empty: one queue, `training`, unbounded, one device: the
single-machine default, under which no job is refused for its size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ByteSize, TypeAdapter, ValidationError

DEFAULT_QUEUE = "training"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENTRY = re.compile(r"^(?P<name>[^=]+)=(?P<memory>[^x]+?)(?:x(?P<devices>\d+))?$")
_BYTES: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


@dataclass(frozen=True)
class QueueClass:
    """A queue and the workers behind it: `memory_bytes` per device (None: unbounded)."""

    name: str
    memory_bytes: int | None
    devices: int = 1

    def holds(self, memory_bytes: int | None, devices: int) -> bool:
        """Whether this queue's workers can run a job of `memory_bytes` per device on `devices`."""
        if devices > self.devices:
            return False
        return self.memory_bytes is None or memory_bytes is None or memory_bytes <= self.memory_bytes

    def within(self, memory_bytes: int, devices: int) -> bool:
        """Whether a worker with `devices` devices of `memory_bytes` each can consume this queue."""
        return devices >= self.devices and (self.memory_bytes is None
                                            or self.memory_bytes <= memory_bytes)

    def describe(self) -> str:
        memory = ("unbounded" if self.memory_bytes is None
                  else ByteSize(self.memory_bytes).human_readable())
        devices = f" × {self.devices} devices" if self.devices > 1 else ""
        return f"{self.name!r} ({memory}{devices})"


def parse_queues(text: str) -> list[QueueClass]:
    """The queue classes `text` lists, smallest first; ValueError saying which entry is wrong."""
    if not text.strip():
        return [QueueClass(DEFAULT_QUEUE, None, 1)]
    queues: dict[str, QueueClass] = {}
    for entry in (part.strip() for part in text.split(",")):
        match = _ENTRY.match(entry)
        if not entry or match is None:
            raise ValueError(f"{entry!r} is not `name=MEMORY` or `name=MEMORYxDEVICES` "
                             "(e.g. `small=8GiB` or `large=80GiBx4`)")
        name = match["name"].strip()
        if not _NAME.match(name) or name in queues:
            raise ValueError(f"queue name {name!r} is not a new name of letters, digits, "
                             "`_`, `.` and `-`")
        try:
            memory = int(_BYTES.validate_python(match["memory"].strip()))
        except ValidationError:
            raise ValueError(f"{match['memory']!r} in {entry!r} is not a size such as "
                             "`8GiB`") from None
        devices = int(match["devices"] or 1)
        if memory <= 0 or devices < 1:
            raise ValueError(f"{entry!r}: memory and devices must be positive")
        queues[name] = QueueClass(name, memory, devices)
    return sorted(queues.values(), key=order)


def order(queue: QueueClass) -> tuple[float, int]:
    """Smallest first: by memory per device, then devices."""
    return (float("inf") if queue.memory_bytes is None else queue.memory_bytes, queue.devices)


def queues_for_worker(queues: list[QueueClass], *, memory_bytes: int, devices: int) -> list[str]:
    """The queues a worker with `devices` devices of `memory_bytes` each consumes: every class it
    is as big as, so a large worker also takes small jobs when it has nothing else."""
    return [q.name for q in queues if q.within(memory_bytes, devices)]
