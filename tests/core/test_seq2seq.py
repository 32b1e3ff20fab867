"""Seq2seq distillation on tiny T5s: decoder inputs, student build, text metrics, and run_job end to
end (loss goes down, ROUGE-L / BLEU / perplexity reported, the export generates)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, T5ForConditionalGeneration

from distillation.config import (
    DataSpec,
    FinetuneSpec,
    Hyperparameters,
    JobConfig,
    JobResult,
    LossSpec,
    StudentSpec,
)
from distillation.engine import run_job
from distillation.export.predict import Predictor
from distillation.models.info import inspect_model
from distillation.students.build import build_student
from distillation.tasks import SEQ2SEQ, get_task
from distillation.tasks.seq2seq import encode_seq2seq, seq2seq_columns, text_metrics
from distillation.tasks.token_data import TokenCollator
from tests.factories.jobs import toy_job
from tests.factories.lm import lm_tokenizer, reverse_records, save_gpt2, save_t5
from tests.factories.records import write_jsonl
from tests.factories.reporting import RecordingReporter


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_t5(tmp_path_factory.mktemp("t5_teacher"))


def test_decoder_inputs_are_the_labels_shifted_right() -> None:
    tokenizer = lm_tokenizer()
    columns = seq2seq_columns(DataSpec(), ["source", "target"])
    rows = encode_seq2seq([{"source": "red cat", "target": "cat red"},
                           {"source": "one", "target": "one two three"}], columns, tokenizer,
                          max_length=16)
    assert rows[0]["labels"] == tokenizer(text_target="cat red")["input_ids"]

    batch = TokenCollator(tokenizer.pad_token_id, decoder_start_id=7)(rows)

    labels, decoder = batch["labels"], batch["decoder_input_ids"]
    assert decoder[:, 0].tolist() == [7, 7]
    short = len(rows[0]["labels"])
    assert decoder[0, 1 : short].tolist() == rows[0]["labels"][:-1]
    assert labels[0, short:].tolist() == [-100] * (labels.shape[1] - short)
    assert decoder[0, short + 1 :].eq(tokenizer.pad_token_id).all()
    assert decoder[1, 1:].tolist() == rows[1]["labels"][:-1]


def test_text_metrics_on_fixed_strings() -> None:
    same = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    none = text_metrics(["a b c d"], ["w x y z"])
    half = text_metrics(["cat dog"], ["cat bird"])

    assert same == pytest.approx({"rougeL": 100.0, "bleu": 100.0})
    assert none == pytest.approx({"rougeL": 0.0, "bleu": 0.0})
    assert half["rougeL"] == pytest.approx(50.0)  # LCS 1 of 2 tokens each side


def test_t5_student_shrinks_both_stacks_and_keeps_the_position_bias(teacher_dir: Path) -> None:
    teacher = T5ForConditionalGeneration.from_pretrained(teacher_dir)
    spec = StudentSpec(architecture={"num_layers": 1, "hidden_size": 16, "num_heads": 2})

    student = build_student(spec, teacher, task="seq2seq")

    config = student.config
    assert (config.num_layers, config.num_decoder_layers, config.d_model, config.d_kv) == \
        (1, 1, 16, 8)
    bias = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert torch.equal(student.state_dict()[bias], teacher.state_dict()[bias])


def test_seq2seq_teacher_needs_a_seq2seq_student(teacher_dir: Path, tmp_path: Path) -> None:
    causal = inspect_model(save_gpt2(tmp_path / "gpt2"))
    problems = get_task(SEQ2SEQ).check_pair(inspect_model(teacher_dir), causal)
    assert problems[0][0] == "student.model" and "encoder-decoder" in problems[0][1]


@pytest.fixture(scope="module")
def finished(teacher_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[JobConfig, JobResult, RecordingReporter]:
    tmp = tmp_path_factory.mktemp("seq2seq_job")
    config = toy_job(
        teacher_dir, tmp, reverse_records(48, seed=1), task=SEQ2SEQ,
        validation_file=write_jsonl(tmp / "dev.jsonl", reverse_records(12, seed=2)),
        teacher_finetune=FinetuneSpec(epochs=8, learning_rate=1e-2),
        losses=[LossSpec("kl", 0.5), LossSpec("ce", 0.5), LossSpec("attention_mse", 0.1),
                LossSpec("cosine", 0.1)],
        hyperparameters=Hyperparameters(epochs=3, batch_size=8, learning_rate=1e-2,
                                        warmup_ratio=0.0, log_every_steps=3, eval_batch_size=16),
        benchmark_runs=2,
    )
    recorder = RecordingReporter()
    return config, run_job(config, recorder), recorder


def test_seq2seq_job_learns_and_reports_rouge_and_bleu(
    finished: tuple[JobConfig, JobResult, RecordingReporter],
) -> None:
    config, result, recorder = finished
    assert recorder.stages() == ["finetune_teacher", "distill", "evaluate", "export"]
    losses = recorder.losses()
    assert losses[-1] < losses[0]
    first = next(data for _, data in recorder.metric_events if "train_loss" in data)
    assert {"loss_kl", "loss_ce", "loss_attention_mse", "loss_cosine"} <= set(first)

    report: dict[str, Any] = json.loads((config.output_dir / "report.json").read_text())
    assert report == result.report and report["metric"] == "rougeL"
    for side in ("teacher", "student"):
        assert {"rougeL", "bleu", "perplexity", "latency_ms_p50", "throughput_per_s"} <= \
            set(report[side])
        assert 0.0 <= report[side]["rougeL"] <= 100.0 and 0.0 <= report[side]["bleu"] <= 100.0
    assert report["teacher"]["rougeL"] > 0  # the fine-tuned teacher gets some words right
    # epochs are compared by perplexity: generating every epoch for ROUGE-L would cost too much
    assert report["epoch_selection"]["metric"] == "perplexity"
    assert {"eval_rougeL", "eval_bleu", "eval_perplexity", "teacher_eval_rougeL"} <= \
        set(result.eval_metrics)

    card = (config.output_dir / "README.md").read_text()
    assert "pipeline_tag: text2text-generation" in card
    for row in ("| ROUGE-L (validation) |", "| BLEU |", "| Perplexity |"):
        assert row in card


def test_seq2seq_export_loads_and_generates(
    finished: tuple[JobConfig, JobResult, RecordingReporter],
) -> None:
    config, _, _ = finished
    model = AutoModelForSeq2SeqLM.from_pretrained(config.output_dir)
    assert model.config.num_layers == 1 and model.config.num_decoder_layers == 1

    predictor = Predictor.load(config.output_dir)
    out = predictor.generate(["red cat dog", "sun moon star"], max_new_tokens=5)

    assert predictor.task == "seq2seq" and len(out) == 2
    assert all(isinstance(item["text"], str) for item in out)
