"""What a worker advertises about its devices: a machine with no GPU driver is read without
torch and without a child process; one with a driver's device node is asked in a child process."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.workers import capabilities
from distillation.training import devices


def test_a_machine_without_a_gpu_driver_is_a_cpu_read_without_a_child_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setattr(devices, "GPU_DEVICE_NODES", (str(tmp_path / "no-such-node"),))

    def no_child(*_: Any, **__: Any) -> None:
        raise AssertionError("a child process was started")

    monkeypatch.setattr(subprocess, "run", no_child)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert capabilities.detect() == ("cpu", 1, memory)


def test_a_machine_with_a_driver_node_is_asked_in_a_child_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    node = tmp_path / "nvidiactl"
    node.touch()
    monkeypatch.setattr(devices, "GPU_DEVICE_NODES", (str(node),))
    assert devices.cpu_only_machine() is None
    calls: list[list[str]] = []

    def child(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        info = {"kind": "cuda", "count": 2, "memory_bytes": 80 * 1024**3}
        return subprocess.CompletedProcess(argv, 0, stdout=json.dumps(info) + "\n")

    monkeypatch.setattr(subprocess, "run", child)
    assert capabilities.detect() == ("cuda", 2, 80 * 1024**3)
    assert calls and calls[0][1:] == ["-m", "distillation.training.devices"]
