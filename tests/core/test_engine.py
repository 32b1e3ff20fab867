"""run_job end to end on tiny models: export, report, progress, cancellation, fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillation.config import (
    Cancelled,
    FinetuneSpec,
    Hyperparameters,
    JobConfig,
    JobResult,
    LossSpec,
    StudentSpec,
)
from distillation.engine import run_job
from distillation.export.predict import Predictor
from distillation.export.predictors import load_predictor
from distillation.export.runtimes import available_runtimes, choose_default, default_runtime
from distillation.losses.functions import KLLoss, LossInputs
from distillation.students.build import build_student
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.reporting import RecordingReporter


def make_config(teacher: Path, tmp: Path, **overrides: Any) -> JobConfig:
    hp = overrides.pop("hyperparameters", None) or Hyperparameters(
        epochs=10, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0, log_every_steps=5,
        eval_batch_size=16,
    )
    return toy_job(teacher, tmp, sentiment_records(32), hyperparameters=hp,
                   **{"benchmark_runs": 3, **overrides})


@pytest.fixture(scope="module")
def finished(
    tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[JobConfig, JobResult, RecordingReporter]:
    tmp = tmp_path_factory.mktemp("job")
    validation = write_jsonl(tmp / "validation.jsonl", sentiment_records(24, seed=1))
    config = make_config(tiny_teacher_dir, tmp, validation_file=validation, export_runtimes=True)
    recorder = RecordingReporter()
    return config, run_job(config, recorder), recorder


@pytest.fixture(scope="module")
def finetuned(
    tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[JobConfig, JobResult, RecordingReporter]:
    tmp = tmp_path_factory.mktemp("finetune")
    config = make_config(
        tiny_base_dir, tmp, teacher_finetune=FinetuneSpec(epochs=10, learning_rate=5e-3),
        hyperparameters=Hyperparameters(epochs=1, batch_size=8, learning_rate=5e-3, max_steps=40,
                                        warmup_ratio=0.0, log_every_steps=5),
    )
    recorder = RecordingReporter()
    return config, run_job(config, recorder), recorder


def test_export_loads_and_matches_predictor(finished: tuple[JobConfig, JobResult, RecordingReporter]) -> None:
    config, result, _ = finished
    out = config.output_dir
    assert result.model_dir == out
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    assert result.size_bytes == (out / "model.safetensors").stat().st_size
    assert result.labels == ["negative", "positive"]

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.num_hidden_layers == 1
    assert result.parameters == sum(p.numel() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = ["the film was superb and moving", "a dull boring plot"]
    with torch.no_grad():
        probs = torch.softmax(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits,
                              dim=-1)
    predicted = Predictor.load(out).classify(texts)
    for row, prediction in zip(probs, predicted, strict=True):
        assert prediction["scores"]["negative"] == pytest.approx(float(row[0]), abs=1e-5)
        assert prediction["scores"]["positive"] == pytest.approx(float(row[1]), abs=1e-5)


def test_report_and_model_card(finished: tuple[JobConfig, JobResult, RecordingReporter]) -> None:
    config, result, _ = finished
    report = json.loads((config.output_dir / "report.json").read_text())
    assert report == result.report
    assert report["metric"] == "accuracy" and report["eval_split"] == "validation"
    for side in ("teacher", "student"):
        assert set(report[side]) == {"accuracy", "macro_f1", "parameters", "size_bytes",
                                     "latency_ms_p50", "throughput_per_s"}
        assert report[side]["latency_ms_p50"] > 0 and report[side]["throughput_per_s"] > 0
    assert report["retention"] == pytest.approx(
        report["student"]["accuracy"] / report["teacher"]["accuracy"], abs=1e-3)
    assert report["compression"] == pytest.approx(
        report["teacher"]["parameters"] / report["student"]["parameters"], abs=1e-3)
    assert report["student"]["size_bytes"] == result.size_bytes
    assert report["epoch_selection"]["mode"] == "best" and report["warnings"] == []
    assert result.teacher is None  # the teacher was not fine-tuned: nothing new to register

    card = (config.output_dir / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "pipeline_tag: text-classification" in front
    assert "- distillation" in front
    for text in ("| Parameters |", "| Size on disk |", "CPU latency", "throughput", "Retention",
                 "speed-up", "0.5 × kl, 0.5 × ce", "temperature 2"):
        assert text in card


def test_training_learns_and_reports(finished: tuple[JobConfig, JobResult, RecordingReporter]) -> None:
    _, result, recorder = finished
    losses = recorder.losses()
    assert len(losses) == 8  # 40 optimizer steps, a metrics event every 5
    assert losses[-1] < losses[0] * 0.8
    assert result.train_loss == losses[-1]
    first = next(data for _, data in recorder.metric_events if "train_loss" in data)
    assert {"train_loss", "loss_kl", "loss_ce", "learning_rate"} <= set(first)
    evals = [data for _, data in recorder.metric_events if "eval_accuracy" in data]
    assert [e["epoch"] for e in evals] == list(range(1, 11))
    assert {"step", "epoch", "eval_accuracy", "eval_macro_f1"} <= set(evals[-1])
    assert result.eval_metrics["eval_accuracy"] >= 0.75  # the polar words generalise

    assert recorder.stages() == ["cache_teacher", "distill", "evaluate", "export"]
    for stage in ("distill", "evaluate", "export"):
        events = [p for p in recorder.progress_events if p.stage == stage]
        assert events[0].percent == 0 and events[-1].percent == 100
    assert recorder.checks >= 40  # asked before every batch


def test_should_stop_cancels_promptly(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    config = make_config(tiny_teacher_dir, tmp_path)
    recorder = RecordingReporter(stop_after=3)
    with pytest.raises(Cancelled):
        run_job(config, recorder)
    assert recorder.checks == 4
    assert not (config.output_dir / "model.safetensors").exists()


def test_base_teacher_needs_finetune(tiny_base_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no sequence-classification head"):
        run_job(make_config(tiny_base_dir, tmp_path), RecordingReporter())


def test_finetune_base_teacher_then_distill(
    finetuned: tuple[JobConfig, JobResult, RecordingReporter],
) -> None:
    config, result, recorder = finetuned
    assert recorder.stages() == ["finetune_teacher", "distill", "evaluate", "export"]
    finetune_losses = recorder.losses("finetune_loss")
    assert finetune_losses[-1] < finetune_losses[0]
    saved = config.work_dir / "teacher"
    teacher = AutoModelForSequenceClassification.from_pretrained(saved)
    assert teacher.config.id2label == {0: "negative", 1: "positive"}
    assert result.labels == ["negative", "positive"]
    assert result.report["eval_split"] == "train"
    assert result.report["teacher"]["accuracy"] >= 0.9
    assert result.report["teacher"]["size_bytes"] == (saved / "model.safetensors").stat().st_size
    assert recorder.warnings == [] and result.report["warnings"] == []  # it learned


def test_the_finetuned_teacher_is_exported_as_a_model_of_its_own(
    finetuned: tuple[JobConfig, JobResult, RecordingReporter],
) -> None:
    config, result, _ = finetuned
    exported = result.teacher
    assert exported is not None and exported.model_dir == config.teacher_output_dir
    names = {p.name for p in exported.model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "report.json",
            "README.md"} <= names
    assert "finetuned.json" not in names  # the work directory's marker stays there
    teacher = AutoModelForSequenceClassification.from_pretrained(exported.model_dir)
    assert teacher.config.id2label == {0: "negative", 1: "positive"}
    assert exported.parameters == sum(p.numel() for p in teacher.parameters())
    assert exported.size_bytes == (exported.model_dir / "model.safetensors").stat().st_size
    report = json.loads((exported.model_dir / "report.json").read_text())
    assert report == exported.report and report["teacher"] == result.report["teacher"]
    assert report["finetune"]["steps"] == 40 and report["finetune"]["learning_rate"] == 5e-3
    assert round(exported.eval_metrics["teacher_eval_accuracy"], 4) == \
        result.report["teacher"]["accuracy"]
    card = (exported.model_dir / "README.md").read_text()
    assert "fine-tuned as a teacher" in card and "pipeline_tag: text-classification" in card


def test_svd_init_starts_closer_than_random(
    finetuned: tuple[JobConfig, JobResult, RecordingReporter],
) -> None:
    # Given a trained width-32 teacher, when width-16 students are built from it,
    # then the one projected from the teacher's weights starts nearer the teacher's outputs.
    config, _, _ = finetuned
    teacher = AutoModelForSequenceClassification.from_pretrained(config.work_dir / "teacher")
    teacher.eval()
    tokenizer = AutoTokenizer.from_pretrained(config.work_dir / "teacher")
    texts = [r["text"] for r in sentiment_records(32, seed=5)]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    kd = {}
    with torch.no_grad():
        teacher_logits = teacher(**batch).logits
        for name, width, init in (("svd", 16, "teacher"), ("random", 16, "random"),
                                  ("copy", 32, "teacher")):
            torch.manual_seed(0)
            spec = StudentSpec(architecture={"hidden_size": width}, init=init)  # type: ignore[arg-type]
            student = build_student(spec, teacher).eval()
            assert student.config.hidden_size == width
            kd[name] = KLLoss(2.0)(LossInputs(student(**batch).logits, teacher_logits)).item()
    assert kd["svd"] < kd["random"]
    assert kd["copy"] == pytest.approx(0.0, abs=1e-6)  # same width and depth: an exact copy


def test_layer_losses_run_in_a_job(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    config = make_config(
        tiny_teacher_dir, tmp_path,
        student=StudentSpec(architecture={"num_layers": 1, "hidden_size": 16, "num_heads": 1,
                                          "intermediate_size": 32}),
        losses=[LossSpec("kl", 1.0), LossSpec("hidden_mse", 1.0, layer_map={0: 1}),
                LossSpec("attention_mse", 1.0), LossSpec("cosine", 0.5, pooling="mean")],
        hyperparameters=Hyperparameters(epochs=1, batch_size=8, max_steps=4, log_every_steps=1,
                                        learning_rate=1e-3),
    )
    recorder = RecordingReporter()

    result = run_job(config, recorder)

    steps = [data for _, data in recorder.metric_events if "train_loss" in data]
    assert len(steps) == 4
    for key in ("loss_hidden_mse", "loss_attention_mse", "loss_cosine"):
        assert all(data[key] > 0 and data[key] == data[key] for data in steps)
    assert steps[-1]["loss_hidden_mse"] < steps[0]["loss_hidden_mse"]
    assert AutoModelForSequenceClassification.from_pretrained(result.model_dir).config.hidden_size \
        == 16


def test_runtimes_measured_and_default_recorded(
    finished: tuple[JobConfig, JobResult, RecordingReporter],
) -> None:
    config, result, _ = finished
    out = config.output_dir
    runtimes = result.report["runtimes"]
    assert json.loads((out / "runtimes.json").read_text()) == runtimes
    entries = runtimes["runtimes"]
    assert list(entries) == ["torch", "onnx", "onnx-int8"]
    for entry in entries.values():
        assert {"accuracy", "macro_f1", "latency_ms_p50", "throughput_per_s", "size_bytes"} \
            <= set(entry)
        assert entry["latency_ms_p50"] > 0 and entry["throughput_per_s"] > 0
    student = result.report["student"]
    assert entries["torch"]["accuracy"] == student["accuracy"]
    # fp32 ONNX computes what torch does: the same predictions on the validation file
    assert entries["onnx"]["accuracy"] == student["accuracy"]
    assert entries["onnx"]["macro_f1"] == student["macro_f1"]
    assert entries["onnx-int8"]["size_bytes"] < entries["onnx"]["size_bytes"]
    # the default follows the rule from the measured figures
    assert (runtimes["default"], runtimes["reason"]) == choose_default(entries)
    assert default_runtime(out) == runtimes["default"]
    assert Predictor.load(out).classify(["a dull plot"])[0]["scores"] == pytest.approx(
        load_predictor(out, "onnx").classify(["a dull plot"])[0]["scores"], abs=1e-4)

    card = (out / "README.md").read_text()
    assert "## Runtimes" in card and f"| {runtimes['default']} (default) |" in card
    assert f"Served by default in **{runtimes['default']}**" in card
    assert (out / "onnx-int8" / "README.md").is_file()


def test_a_failed_onnx_export_leaves_a_torch_only_job(
    tiny_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a student neither ONNX exporter can trace (stood for by both refusing)
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unsupported operator aten::mystery")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    config = make_config(tiny_teacher_dir, tmp_path, export_runtimes=True,
                         hyperparameters=Hyperparameters(epochs=1, batch_size=8, learning_rate=5e-3,
                                                         warmup_ratio=0.0, max_steps=2))
    recorder = RecordingReporter()

    result = run_job(config, recorder)

    runtimes = result.report["runtimes"]
    assert runtimes["default"] == "torch" and list(runtimes["runtimes"]) == ["torch"]
    assert "aten::mystery" in runtimes["reason"]
    assert any("not exported to ONNX" in w and "aten::mystery" in w for w in recorder.warnings)
    assert result.report["warnings"] == [w for w in recorder.warnings if "ONNX" in w]
    assert available_runtimes(config.output_dir) == ["torch"]
    assert "torch only: the ONNX export failed" in (config.output_dir / "README.md").read_text()


def test_with_the_export_switched_off_a_classifier_is_torch_only(
    tiny_teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given a classification job whose config turns the runtimes' export off
    config = make_config(tiny_teacher_dir, tmp_path, export_runtimes=False,
                         hyperparameters=Hyperparameters(epochs=1, batch_size=8, learning_rate=5e-3,
                                                         warmup_ratio=0.0, max_steps=2))
    recorder = RecordingReporter()

    result = run_job(config, recorder)

    # Then the student is the torch model alone, saying why, with no warning and no ONNX files
    runtimes = result.report["runtimes"]
    assert runtimes["default"] == "torch" and list(runtimes["runtimes"]) == ["torch"]
    assert "not exported" in runtimes["reason"]
    assert json.loads((config.output_dir / "runtimes.json").read_text()) == runtimes
    assert recorder.warnings == [] and result.report["warnings"] == []
    assert available_runtimes(config.output_dir) == ["torch"]
    assert not list(config.output_dir.rglob("*.onnx"))
    assert "torch only: the ONNX runtimes were not exported" in (
        config.output_dir / "README.md").read_text()
    assert Predictor.load(config.output_dir).classify(["a dull plot"])[0]["label"] in {
        "negative", "positive"}
