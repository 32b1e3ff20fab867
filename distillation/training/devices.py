"""What this machine trains on: the device kind, how many, and the memory of each (a worker
advertises it when it starts, `app.workers`).

`python -m distillation.training.devices` prints it as JSON. The worker asks in a child process: querying
CUDA initialises it, and a Celery worker that did so in its main process could not use CUDA in
the job processes it forks.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" or "cpu"
    count: int
    memory_bytes: int  # per device: the smallest card's, or the machine's RAM


# Device nodes a GPU driver creates: NVIDIA's (CUDA) and AMD's (ROCm, which torch also reports as
# `cuda`). With none of them, torch could not find a GPU either.
GPU_DEVICE_NODES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def cpu_only_machine() -> DeviceInfo | None:
    """The CPU's `DeviceInfo` when this machine has no GPU driver at all (read from the device
    nodes, without importing torch: a fraction of a millisecond instead of a second and a half);
    None when there may be a GPU, for `detect_devices` to query."""
    if any(os.path.exists(node) for node in GPU_DEVICE_NODES):
        return None
    return _cpu()


def _cpu() -> DeviceInfo:
    return DeviceInfo("cpu", 1, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")))


def detect_devices() -> DeviceInfo:
    """CUDA devices when there are any (the smallest one's total memory), else the CPU (one
    device, the machine's physical memory)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        count = torch.cuda.device_count()
        memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(count))
        return DeviceInfo("cuda", count, int(memory))
    return _cpu()


if __name__ == "__main__":
    print(json.dumps(asdict(detect_devices())))
