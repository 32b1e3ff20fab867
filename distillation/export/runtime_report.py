"""The export stage's runtimes: a classifier student exported to ONNX (fp32 and int8), each runtime
measured on the job's evaluation split as the evaluate stage measures torch, and the default
chosen (`runtimes.choose_default`). Written to `runtimes.json` and the report's `runtimes`.
With the config's `export_runtimes` off, a classifier is torch only, as every other task is.

Everything is measured through the task's own `evaluate` and the report's `measure_speed`: an
ONNX runtime enters them as a module (`OnnxClassifier`), so no metric is computed twice.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from distillation.config import JobConfig, Reporter
from distillation.export.onnx_export import ExportFailed, export_onnx
from distillation.export.onnx_runtime import OnnxClassifier, open_session
from distillation.export.report import measure_speed
from distillation.export.runtimes import ONNX_FILE, choose_default, write_runtimes
from distillation.models.info import CLASSIFICATION
from distillation.tasks import Task, TaskData
from distillation.training.loop import check_stop

CPU = torch.device("cpu")


def torch_only(entry: dict[str, Any], reason: str) -> dict[str, Any]:
    return {"default": "torch", "reason": reason, "runtimes": {"torch": entry}}


def runtime_entry(metrics: dict[str, float], speed: dict[str, float], size_bytes: int
                  ) -> dict[str, Any]:
    return {**{k: round(v, 4) for k, v in metrics.items()}, **speed, "size_bytes": size_bytes}


def qad_note(summary: dict[str, Any]) -> str:
    """Quantisation-aware distillation in words, for the runtime reason."""
    note = (f"the student trained quantisation-aware for the last {summary['steps']} of "
            f"{summary['optimizer_steps']} optimizer steps ({summary['share']:.0%})")
    if not summary["in_exported_weights"]:
        note += ", but the exported epoch is from before them (the best-epoch selection)"
    return note


def measure_runtimes(
    config: JobConfig, task: Task, data: TaskData, *, model_dir: Path, student: torch.nn.Module,
    torch_metrics: dict[str, float], torch_speed: dict[str, float], size_bytes: int,
    device: torch.device, reporter: Reporter, quantization_aware: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Export the student in `model_dir` to its ONNX runtimes, measure each, choose the default;
    (the report's `runtimes`, warnings). A failed export leaves torch alone, with a warning.
    `quantization_aware`: the engine's summary of QAD when the student trained through int8
    rounding (`qad_summary`), named in the reason so users see why int8 was offered."""
    hp = config.hyperparameters
    if device.type != "cpu":  # the evaluate stage ran in bf16 autocast: measure fp32 on the CPU
        torch_metrics = task.evaluate(student.to(CPU), data.student, data, device=CPU,  # type: ignore[arg-type]
                                      batch_size=hp.eval_batch_size,
                                      on_batch=lambda: check_stop(reporter))
    entries = {"torch": runtime_entry(torch_metrics, torch_speed, size_bytes)}
    if task.name != CLASSIFICATION or not config.export_runtimes:
        reason = (f"{task.name} students run in torch only (the ONNX runtimes are for encoder "
                  "classifiers)" if task.name != CLASSIFICATION else
                  "the ONNX runtimes were not exported (export_runtimes is off)")
        info = torch_only(entries["torch"], reason)
        write_runtimes(model_dir, info)
        return info, []
    started = time.monotonic()
    try:
        dirs = export_onnx(model_dir)
    except ExportFailed as exc:
        warning = f"The student was not exported to ONNX ({exc}); it serves in torch only."
        reporter.message(warning, level="warning")
        info = torch_only(entries["torch"], f"the ONNX export failed: {exc}")
        write_runtimes(model_dir, info)
        return info, [warning]
    export_seconds = round(time.monotonic() - started, 1)
    threads = torch.get_num_threads()  # the same threads torch was measured with
    for runtime, path in dirs.items():
        module = OnnxClassifier(open_session(path, threads))
        metrics = task.evaluate(module, data.student, data, device=CPU,  # type: ignore[arg-type]
                                batch_size=hp.eval_batch_size,
                                on_batch=lambda: check_stop(reporter))
        check_stop(reporter)
        speed = measure_speed(module, data.student.evaluation, data.student.collator,
                              runs=config.benchmark_runs,
                              inputs=partial(task.forward_inputs, module))
        size = sum(f.stat().st_size for f in path.glob(f"{ONNX_FILE}*"))  # + external data
        entries[runtime] = runtime_entry(metrics, speed, size)
    default, reason = choose_default(entries, metric=task.report_metric)
    if quantization_aware is not None:
        reason += "; " + qad_note(quantization_aware)
    info = {"default": default, "reason": reason, "runtimes": entries,
            "export_seconds": export_seconds, "threads": threads}
    if quantization_aware is not None:
        info["quantization_aware"] = quantization_aware
    write_runtimes(model_dir, info)
    reporter.message(f"Exported to ONNX (fp32 and int8) in {export_seconds:g} s; serving "
                     f"default: {reason}.")
    return info, []
