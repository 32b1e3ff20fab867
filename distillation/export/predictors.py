"""Loading a served model in the runtime asked for: torch (`predict.Predictor`) or ONNX Runtime
(`onnx_runtime.OnnxPredictor`). Apart from `runtimes`, which describes a model's runtimes
without loading either, so the API can import that without torch's stack.

ONNX Runtime is imported on the first ONNX load, not with this module: the API imports this at
start-up, and a server that only ever serves torch students need not load it."""

from __future__ import annotations

from pathlib import Path

from distillation.export.predict import Predictor
from distillation.export.runtimes import (
    Runtime,
    RuntimeUnavailable,
    ServingPredictor,
    available_runtimes,
    runtime_dir,
)


def load_predictor(model_dir: Path, runtime: Runtime, *, threads: int | None = None) -> ServingPredictor:
    """Load the model in `runtime`; RuntimeUnavailable when its files are absent. `threads`:
    ONNX Runtime's intra-op threads (default: the process's CPUs); torch's thread count is
    process-wide, set by the caller (`torch.set_num_threads`)."""
    if runtime not in available_runtimes(model_dir):
        have = ", ".join(available_runtimes(model_dir))
        raise RuntimeUnavailable(f"this model has no {runtime} export (it can run in: {have})")
    if runtime == "torch":
        return Predictor.load(model_dir)
    from distillation.export.onnx_runtime import OnnxPredictor  # onnxruntime: on first use

    predictor: ServingPredictor = OnnxPredictor.load(runtime_dir(model_dir, runtime),
                                                     threads=threads)
    return predictor
