"""A finished classifier directory exported to ONNX: `onnx/` (fp32) and `onnx-int8/` (dynamic int8).

The graph is written by `torch.onnx.export` (the `torch.export`-based exporter, with the
TorchScript one as a fallback for models `torch.export` cannot trace), batch and sequence axes
dynamic; the int8 copy by ONNX Runtime's `quantize_dynamic` (int8 weights, activations quantised
on the fly: no calibration data needed). Optimum's exporter would be the usual choice, but its
release pins transformers below the version this service runs.

Each runtime directory loads as it is: `model.onnx`, `config.json` (labels in `id2label`), the
tokenizer files and a README with a snippet that runs it. Before a directory is kept its logits
are compared with the torch model's on a batch of another shape than the one traced, so a graph
that baked in a shape or dropped an input is refused (`ExportFailed`), never served.
"""

from __future__ import annotations

import inspect
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from distillation.export.onnx_runtime import OnnxClassifier, open_session
from distillation.export.runtimes import ONNX_FILE, Runtime, runtime_dir
from distillation.models.files import CONFIG
from distillation.models.info import CLASSIFICATION, max_input_length, model_info, task_of
from distillation.models.loading import load_config, load_model, load_tokenizer

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Largest |logit| difference from torch accepted of the fp32 graph (it computes the same ops).
FP32_TOLERANCE = 1e-3
# protobuf's limit is 2 GB; past this the weights go to an external data file next to the graph.
EXTERNAL_DATA_BYTES = 1_500_000_000
# int8 weights with one scale per output channel (MatMulInteger's per-column B scales) rather
# than one per tensor, so a row of small weights is not rounded to the largest row's steps; and
# on 7 bits (-64..64, `reduce_range`): x86 CPUs without VNNI multiply uint8 by int8 with
# VPMADDUBSW, whose int16 pair sums saturate with full-range weights (per channel, every row
# reaches ±127), which costs more than the bit (measured in benchmarks/int8_accuracy.py).
# `training.quantization` simulates exactly this arithmetic.
PER_CHANNEL = True
REDUCE_RANGE = True
# Traced on one pair batch, checked on another of other batch size and length.
TRACE_TEXTS = (["a short text", "a second, somewhat longer text"], ["its pair", "pair"])
CHECK_TEXTS = (["one", "a third text that is longer than the traced ones, to be sure", "x y"],
               ["a", "b", "the second text of the last pair"])


class ExportFailed(RuntimeError):
    """The model could not be exported (the message says why); it still serves in torch."""


def export_onnx(model_dir: Path, *, quantize: bool = True,
                per_channel: bool = PER_CHANNEL) -> dict[Runtime, Path]:
    """Write `model_dir/onnx/` (and, with `quantize`, `model_dir/onnx-int8/`, its weights
    quantised per output channel on 7 bits, or per tensor on 8 as before per-channel weights)
    from the Hugging Face classifier in `model_dir`;
    {runtime: its directory}. ExportFailed on any failure, with no runtime directory left
    behind."""
    config = load_config(model_dir)
    if task_of(config) != CLASSIFICATION:
        raise ExportFailed(f"only sequence classifiers are exported to ONNX, not "
                           f"{task_of(config)} models")
    dirs: dict[Runtime, Path] = {"onnx": runtime_dir(model_dir, "onnx")}
    if quantize:
        dirs["onnx-int8"] = runtime_dir(model_dir, "onnx-int8")
    try:
        model = load_model(AutoModelForSequenceClassification, model_dir).eval()
        tokenizer = load_tokenizer(model_dir)
        for path in dirs.values():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        accepted = inspect.signature(model.forward).parameters
        names = [n for n in INPUTS if n in tokenizer.model_input_names and n in accepted]
        large = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
        trace = tokenizer(*TRACE_TEXTS, padding=True, return_tensors="pt")
        _export(model, {n: trace[n] for n in names}, dirs["onnx"] / ONNX_FILE, large=large)
        check = tokenizer(*CHECK_TEXTS, padding=True, return_tensors="pt")
        _check(model, dirs["onnx"], {n: check[n] for n in names})
        if quantize:
            quantize_graph(dirs["onnx"] / ONNX_FILE, dirs["onnx-int8"] / ONNX_FILE,
                           large=large, per_channel=per_channel, reduce_range=per_channel)
        labels = model_info(config).labels or []
        max_length = max_input_length(config, tokenizer)
        for runtime, path in dirs.items():
            shutil.copyfile(model_dir / CONFIG, path / CONFIG)
            tokenizer.save_pretrained(path)
            (path / "README.md").write_text(usage_note(runtime, labels, max_length))
            open_session(path, threads=1)  # the int8 graph must load too
    except Exception as exc:
        for path in dirs.values():
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(exc, ExportFailed):
            raise
        raise ExportFailed(f"{type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    return dirs


def _export(model: PreTrainedModel, sample: dict[str, torch.Tensor], path: Path, *,
            large: bool) -> None:
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    common: dict[str, Any] = {"kwargs": sample, "input_names": list(sample),
                              "output_names": ["logits"]}
    # The exporters' deprecation and tracing warnings are not the job's to show.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (), str(path), dynamo=True, external_data=large,
                              verbose=False,
                              dynamic_shapes={n: {0: batch, 1: sequence} for n in sample},
                              **common)
        except Exception as dynamo_error:
            try:
                torch.onnx.export(model, (), str(path), dynamo=False, opset_version=17,
                                  dynamic_axes={n: {0: "batch", 1: "sequence"} for n in sample}
                                  | {"logits": {0: "batch"}}, **common)
            except Exception:
                raise dynamo_error from None


@torch.inference_mode()
def _check(model: PreTrainedModel, onnx_dir: Path, sample: dict[str, torch.Tensor]) -> None:
    expected = model(**sample).logits.float()
    got = OnnxClassifier(open_session(onnx_dir, threads=1))(**sample).logits
    if got.shape != expected.shape:
        raise ExportFailed(f"the ONNX graph gives logits of shape {tuple(got.shape)}, the model "
                           f"{tuple(expected.shape)}")
    diff = float((got - expected).abs().max())
    if diff > FP32_TOLERANCE:
        raise ExportFailed(f"the ONNX graph's logits differ from the model's by up to {diff:.2g}")


def quantize_graph(source: Path, target: Path, *, large: bool = False,
                   per_channel: bool = PER_CHANNEL, reduce_range: bool = REDUCE_RANGE) -> None:
    """int8 weights by `quantize_dynamic` (symmetric, one scale per output channel with
    `per_channel`, 7 bits with `reduce_range`), after ONNX Runtime's recommended pre-processing
    (shape inference and graph optimisation, so that the MatMuls it quantises are seen whole)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("prepared.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(source, prepared, skip_symbolic_shape=True,
                          save_as_external_data=large)
        quantize_dynamic(prepared, target, weight_type=QuantType.QInt8, per_channel=per_channel,
                         reduce_range=reduce_range, use_external_data_format=large)
    for leftover in target.parent.glob("prepared.onnx*"):
        leftover.unlink()


def usage_note(runtime: Runtime, labels: list[str], max_length: int) -> str:
    """README.md of a runtime directory: what it is and a snippet that runs it as printed (and
    truncates as the service does)."""
    kind = ("fp32 (the same weights as the PyTorch model)" if runtime == "onnx" else
            "dynamically quantised int8 (int8 weights, activations quantised on the fly)")
    return f"""# ONNX export ({runtime})

This directory is the classifier as an ONNX graph, {kind}, with its tokenizer and `config.json`
(labels in `id2label`). It runs in ONNX Runtime on the CPU, without PyTorch:

```
pip install onnxruntime transformers
```

```python
import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

model_dir = "path/to/this/directory"
labels = {json.dumps(labels)}
tokenizer = AutoTokenizer.from_pretrained(model_dir)
session = ort.InferenceSession(f"{{model_dir}}/model.onnx", providers=["CPUExecutionProvider"])

texts = ["a moving, funny film", "a dull plot"]  # or pairs: tokenizer(texts, second_texts, ...)
encoded = tokenizer(texts, padding=True, truncation=True, max_length={max_length},
                    return_tensors="np")
feeds = {{i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}}
logits = session.run(None, feeds)[0]
probabilities = np.exp(logits - logits.max(-1, keepdims=True))
probabilities /= probabilities.sum(-1, keepdims=True)
print([(labels[i], float(p[i])) for i, p in zip(probabilities.argmax(-1), probabilities)])
```
"""
