"""The runtimes a served model can run in, and where each one's files live in a model directory.

A model directory is a Hugging Face directory (the `torch` runtime). An exported encoder student
may also hold `onnx/` (ONNX Runtime, fp32) and `onnx-int8/` (dynamically quantised int8), each a
directory its runtime loads as it is, and `runtimes.json`: the runtime the model is served with by
default and each runtime's measured accuracy and latency.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
RUNTIMES_FILE = "runtimes.json"
ONNX_FILE = "model.onnx"
# The sub-directories that are not part of the Hugging Face (torch) download.
RUNTIME_SUBDIRS: dict[Runtime, str] = {"onnx": "onnx", "onnx-int8": "onnx-int8"}
# A runtime is offered as the default only when its accuracy is within this much (0.5 points) of
# torch fp32; int8 also only within this much of ONNX fp32.
ACCURACY_TOLERANCE = 0.005


class RuntimeUnavailable(ValueError):
    """The model has no files for the runtime asked for."""


class ServingPredictor(Protocol):
    """What the predict endpoint calls: a loaded model in one runtime."""

    task: str

    def classify(self, inputs: Any) -> list[dict[str, Any]]: ...

    def generate(self, inputs: Any, max_new_tokens: int) -> list[dict[str, Any]]: ...

    def chat(self, conversations: Any, max_new_tokens: int, *,
             stream: Any = None) -> list[dict[str, Any]]: ...


def runtime_dir(model_dir: Path, runtime: Runtime) -> Path:
    """The directory that `runtime` loads: the model directory itself for torch."""
    return model_dir if runtime == "torch" else model_dir / RUNTIME_SUBDIRS[runtime]


def available_runtimes(model_dir: Path) -> list[Runtime]:
    """torch, then each ONNX runtime whose files the directory holds."""
    return ["torch", *(r for r in RUNTIMES[1:] if (runtime_dir(model_dir, r) / ONNX_FILE).is_file())]


def runtimes_info(model_dir: Path) -> dict[str, Any]:
    """`runtimes.json` (`{"default": …, "runtimes": {name: {...}}}`), or torch alone."""
    path = model_dir / RUNTIMES_FILE
    if path.is_file():
        info: dict[str, Any] = json.loads(path.read_text())
        return info
    return {"default": "torch", "runtimes": {"torch": {}}}


def default_runtime(model_dir: Path) -> Runtime:
    """The runtime recorded at export (torch when none was, or when its files are gone)."""
    name = runtimes_info(model_dir).get("default", "torch")
    return name if name in available_runtimes(model_dir) else "torch"


def write_runtimes(model_dir: Path, info: dict[str, Any]) -> None:
    """Record `runtimes.json` (what `runtimes_info` and `default_runtime` read)."""
    (model_dir / RUNTIMES_FILE).write_text(json.dumps(info, indent=2) + "\n")


def choose_default(entries: dict[str, dict[str, Any]], metric: str = "accuracy") -> tuple[Runtime, str]:
    """The default runtime and why: the fastest at batch 1 (`latency_ms_p50`) of torch and the
    runtimes whose `metric` is within `ACCURACY_TOLERANCE` of torch's, int8 only when it is also
    within it of ONNX fp32 (so quantisation never costs more than half a point on its own)."""
    torch_score = entries["torch"][metric]
    offered: list[Runtime] = ["torch"]
    refused: list[str] = []
    for name in RUNTIMES[1:]:
        entry = entries.get(name)
        if entry is None:
            continue
        references = [("torch fp32", torch_score)]
        if name == "onnx-int8":
            references.append(("onnx fp32", entries.get("onnx", {}).get(metric, float("-inf"))))
        behind = [(ref, score - entry[metric]) for ref, score in references
                  if entry[metric] < score - ACCURACY_TOLERANCE - 1e-9]
        if behind:
            ref, gap = behind[0]
            refused.append(f"{name} is {gap * 100:.2f} points of {metric} below {ref}")
        else:
            offered.append(name)
    best = min(offered, key=lambda name: entries[name]["latency_ms_p50"])
    rivals = [f"{name} {entries[name]['latency_ms_p50']:.2f} ms" for name in offered if name != best]
    within = {"torch": "", "onnx": " of torch fp32", "onnx-int8": " of torch fp32 and onnx fp32"}
    reason = (f"the fastest at batch 1 ({entries[best]['latency_ms_p50']:.2f} ms p50"
              + (f"; {', '.join(rivals)}" if rivals else "") + ")"
              + (f" within {ACCURACY_TOLERANCE * 100:.1f} points{within[best]} {metric}"
                 if best != "torch" else ""))
    if refused:
        reason += f"; not offered: {'; '.join(refused)}"
    return best, reason
