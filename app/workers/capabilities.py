"""A worker's capabilities: given (`distill worker --memory --devices --queues`, or the
`DISTILL_WORKER_*` settings) or read from its devices, and the queues they let it consume."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from app.jobs.queue_classes import queues_for_worker
from app.settings import Settings
from distillation.training.devices import cpu_only_machine


@dataclass(frozen=True)
class Capabilities:
    """What a worker advertises: its device kind, devices and memory per device, its queues."""

    device: str
    device_count: int
    memory_bytes: int
    queues: tuple[str, ...]


class NoQueue(ValueError):
    """The worker is smaller than every configured queue class."""


def detect() -> tuple[str, int, int]:
    """(kind, devices, memory per device): on a machine with no GPU driver, the CPU at once;
    otherwise read in a child process (`distillation.training.devices`): CUDA queried in this
    process would be unusable in the job processes it forks."""
    cpu = cpu_only_machine()
    if cpu is not None:
        return cpu.kind, cpu.count, cpu.memory_bytes
    out = subprocess.run([sys.executable, "-m", "distillation.training.devices"], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    info = json.loads(out.strip().splitlines()[-1])
    return str(info["kind"]), int(info["count"]), int(info["memory_bytes"])


def resolve(settings: Settings, *, queues: list[str] | None = None) -> Capabilities:
    """This worker's capabilities: what the settings say, the rest read from its devices; its
    queues are `queues` when given, else every configured class it is as big as."""
    memory, devices = settings.worker_memory, settings.worker_devices
    kind: str = settings.worker_device or ""
    if memory is None or devices is None or not kind:
        found_kind, found_devices, found_memory = detect()
        kind = kind or found_kind
        devices = devices if devices is not None else found_devices
        memory = memory if memory is not None else found_memory  # type: ignore[assignment]
    assert memory is not None and devices is not None
    classes = settings.queue_classes
    names = queues or queues_for_worker(classes, memory_bytes=int(memory), devices=devices)
    if not names:
        smallest = classes[0]
        raise NoQueue(
            f"this worker ({int(memory) / 1024**3:.1f} GiB × {devices} {kind} device(s)) is "
            f"smaller than every configured queue (DISTILL_WORKER_QUEUES: "
            f"{', '.join(q.describe() for q in classes)}); the smallest is "
            f"{smallest.describe()}. Give --queues, or --memory/--devices if it was misread.")
    return Capabilities(device=kind, device_count=devices, memory_bytes=int(memory),
                        queues=tuple(names))
