"""ONNX runtimes of a tiny BERT classifier: the export matches torch, int8 agrees with fp32, each
runtime directory loads as it is, and the default runtime is chosen by the rules."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillation.export.onnx_export import ExportFailed, export_onnx
from distillation.export.onnx_runtime import OnnxClassifier, OnnxPredictor, open_session
from distillation.export.predict import Predictor
from distillation.export.predictors import load_predictor
from distillation.export.runtimes import (
    RuntimeUnavailable,
    available_runtimes,
    choose_default,
    default_runtime,
    write_runtimes,
)
from tests.factories.lm import save_gpt2

TEXTS = ["a good film", "a really dull and boring plot that goes on and on", "fine", "meh " * 300]
PAIRS = [("the premise", "the hypothesis is much longer than the premise"), ("a", "b")]
WORDS = ["good", "bad", "film", "plot", "dull", "moving", "funny", "slow", "great", "boring",
         "actor", "story", "scene"]


@pytest.fixture(scope="module")
def exported(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(tiny_teacher_dir, model_dir)
    dirs = export_onnx(model_dir)
    assert dirs == {"onnx": model_dir / "onnx", "onnx-int8": model_dir / "onnx-int8"}
    return model_dir


def sentences(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(3 + i % 9)) for i in range(n)]


def test_fp32_logits_match_torch_on_padded_batches(exported: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    onnx = OnnxClassifier(open_session(exported / "onnx", threads=1))
    for batch in (tokenizer(TEXTS, padding=True, truncation=True, max_length=128,
                            return_tensors="pt"),
                  tokenizer(*map(list, zip(*PAIRS, strict=True)), padding=True,
                            return_tensors="pt")):
        assert int(batch["attention_mask"].sum()) < batch["attention_mask"].numel()  # padded
        with torch.no_grad():
            expected = model(**batch).logits
        got = onnx(**batch).logits
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-4)


def test_fp32_predictor_answers_as_the_torch_predictor(exported: Path) -> None:
    inputs: list[Any] = [*TEXTS, *PAIRS, ["four", "five"]]
    expected = Predictor.load(exported).classify(inputs)
    got = load_predictor(exported, "onnx").classify(inputs)

    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert list(g["scores"]) == list(e["scores"]) == ["negative", "positive"]
        assert g["scores"] == pytest.approx(e["scores"], abs=1e-4)
        assert g["score"] == pytest.approx(e["score"], abs=1e-4)


def test_int8_runs_and_mostly_agrees_with_fp32(exported: Path) -> None:
    texts = sentences(60)
    fp32 = OnnxPredictor.load(exported / "onnx").classify(texts)
    int8 = OnnxPredictor.load(exported / "onnx-int8").classify(texts)

    agree = sum(a["label"] == b["label"] for a, b in zip(fp32, int8, strict=True))
    assert agree >= 0.9 * len(texts)
    assert max(abs(a["score"] - b["score"]) for a, b in zip(fp32, int8, strict=True)) < 0.05
    # int8 weights: the graph is well under half the fp32 one.
    assert (exported / "onnx-int8/model.onnx").stat().st_size < \
        0.5 * (exported / "onnx/model.onnx").stat().st_size


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_runtime_directory_runs_its_readme_snippet(exported: Path, runtime: str) -> None:
    folder = exported / runtime
    assert {"model.onnx", "config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in folder.iterdir()}
    snippet = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)
    assert snippet is not None
    code = snippet.group(1).replace('"path/to/this/directory"', repr(str(folder)))

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    printed = eval(out.getvalue())

    expected = OnnxPredictor.load(folder).classify(["a moving, funny film", "a dull plot"])
    assert [label for label, _ in printed] == [e["label"] for e in expected]
    assert [p for _, p in printed] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_predictor_threads_and_heads(exported: Path) -> None:
    predictor = load_predictor(exported, "onnx-int8", threads=1)
    assert isinstance(predictor, OnnxPredictor) and predictor.task == "sequence-classification"
    assert predictor.model.session.get_session_options().intra_op_num_threads == 1
    assert predictor.model.session.get_session_options().inter_op_num_threads == 1
    with pytest.raises(ValueError, match="torch runtime"):
        predictor.generate(["x"], max_new_tokens=2)
    assert available_runtimes(exported) == ["torch", "onnx", "onnx-int8"]


def test_default_runtime_follows_runtimes_json(exported: Path, tiny_teacher_dir: Path) -> None:
    assert default_runtime(exported) == "torch"  # no runtimes.json yet
    write_runtimes(exported, {"default": "onnx-int8", "runtimes": {}})
    assert default_runtime(exported) == "onnx-int8"
    (exported / "runtimes.json").unlink()
    with pytest.raises(RuntimeUnavailable, match="no onnx export"):
        load_predictor(tiny_teacher_dir, "onnx")


def test_export_refuses_a_language_model(tmp_path: Path) -> None:
    model_dir = save_gpt2(tmp_path / "gpt")
    with pytest.raises(ExportFailed, match="only sequence classifiers"):
        export_onnx(model_dir)
    assert not (model_dir / "onnx").exists()


def test_export_failure_leaves_no_runtime_directory(
    tiny_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an architecture neither exporter knows (stood for by both exporters refusing)
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unsupported operator aten::mystery")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_teacher_dir, model_dir)

    with pytest.raises(ExportFailed, match="aten::mystery"):
        export_onnx(model_dir)
    assert available_runtimes(model_dir) == ["torch"]
    assert not (model_dir / "onnx").exists() and not (model_dir / "onnx-int8").exists()


def entry(accuracy: float, latency: float) -> dict[str, float]:
    return {"accuracy": accuracy, "latency_ms_p50": latency}


@pytest.mark.parametrize(
    ("entries", "default", "needle"),
    [
        # int8 fastest and within half a point of both: chosen.
        ({"torch": entry(0.90, 3.0), "onnx": entry(0.90, 2.0), "onnx-int8": entry(0.896, 1.0)},
         "onnx-int8", "within 0.5 points of torch fp32 and onnx fp32 accuracy"),
        # int8 0.6 points below onnx fp32 (though only 0.1 below torch): not offered.
        ({"torch": entry(0.895, 3.0), "onnx": entry(0.90, 2.0), "onnx-int8": entry(0.894, 1.0)},
         "onnx", "onnx-int8 is 0.60 points of accuracy below onnx fp32"),
        # onnx slower than torch: torch stays.
        ({"torch": entry(0.90, 1.0), "onnx": entry(0.90, 2.0)}, "torch", "the fastest"),
        # Both ONNX runtimes lose accuracy: torch, whatever their speed.
        ({"torch": entry(0.90, 3.0), "onnx": entry(0.89, 2.0), "onnx-int8": entry(0.89, 1.0)},
         "torch", "onnx is 1.00 points of accuracy below torch fp32"),
        # int8 exactly half a point below both fp32 runtimes: still offered.
        ({"torch": entry(0.905, 3.0), "onnx": entry(0.905, 2.0), "onnx-int8": entry(0.90, 1.0)},
         "onnx-int8", "within 0.5 points of torch fp32 and onnx fp32 accuracy"),
        # int8 0.57 points below both (the demo's student before per-channel weights): refused.
        ({"torch": entry(0.8257, 3.0), "onnx": entry(0.8257, 2.0),
          "onnx-int8": entry(0.82, 1.0)}, "onnx", "onnx-int8 is 0.57 points of accuracy below"),
        # Exactly half a point below: still offered.
        ({"torch": entry(0.905, 3.0), "onnx": entry(0.90, 2.0)}, "onnx",
         "the fastest at batch 1 (2.00 ms p50; torch 3.00 ms) within 0.5 points of torch fp32"),
    ],
)
def test_choose_default(entries: dict[str, dict[str, float]], default: str, needle: str) -> None:
    chosen, reason = choose_default(entries)
    assert chosen == default
    assert needle in reason
