"""Causal-LM distillation on tiny GPT-2s: label masking and the shift, student init, pair checks,
and run_job end to end (loss goes down, perplexity reported, the export generates)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from distillation.config import (
    DataSpec,
    FinetuneSpec,
    Hyperparameters,
    JobConfig,
    JobResult,
    LossSpec,
    StudentSpec,
)
from distillation.data.vocab import vocab_fingerprint
from distillation.engine import run_job
from distillation.export.predict import Predictor
from distillation.job_checks import check_config
from distillation.models.info import inspect_model
from distillation.students.build import build_student, principal_directions, transfer
from distillation.tasks import CAUSAL_LM, get_task
from distillation.tasks.causal_lm import causal_columns, encode_causal
from distillation.tasks.token_data import TokenCollator, target_rows
from tests.factories.jobs import toy_job
from tests.factories.lm import copy_records, lm_tokenizer, permute_vocab, save_gpt2
from tests.factories.records import write_jsonl
from tests.factories.reporting import RecordingReporter


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt2(tmp_path_factory.mktemp("gpt2_teacher"))


def test_prompt_tokens_and_padding_are_masked() -> None:
    tokenizer = lm_tokenizer()
    rows = [{"prompt": "copy red cat", "completion": "red cat"}, {"text": "one two three"}]
    prompt_cols = causal_columns(DataSpec(), ["prompt", "completion"])
    text_cols = causal_columns(DataSpec(), ["text"])

    first = encode_causal(rows[:1], prompt_cols, tokenizer, max_length=32)[0]
    second = encode_causal(rows[1:], text_cols, tokenizer, max_length=32)[0]

    prompt = tokenizer("copy red cat")["input_ids"]  # [CLS] copy red cat [SEP]
    completion = tokenizer("red cat", add_special_tokens=False)["input_ids"]
    assert first["input_ids"] == prompt + completion + [tokenizer.sep_token_id]
    assert first["labels"] == [-100] * len(prompt) + completion + [tokenizer.sep_token_id]
    assert second["labels"] == second["input_ids"] == tokenizer("one two three")["input_ids"]

    batch = TokenCollator(tokenizer.pad_token_id)([first, second])
    short = len(second["input_ids"])
    assert batch["labels"][1, short:].tolist() == [-100] * (batch["labels"].shape[1] - short)
    assert batch["attention_mask"][1, short:].sum() == 0
    # After the shift, the targets are the completion and its end token, then the whole text
    # but its first token.
    logits = torch.zeros((*batch["input_ids"].shape, 5))
    _, labels = target_rows(logits, batch["labels"], shift=True)
    assert labels.tolist() == [*completion, tokenizer.sep_token_id, *second["input_ids"][1:]]


def test_long_prompt_keeps_its_end_and_the_completion() -> None:
    tokenizer = lm_tokenizer()
    record = {"prompt": " ".join(["red"] * 40) + " blue", "completion": "cat dog"}
    row = encode_causal([record], causal_columns(DataSpec(), list(record)), tokenizer,
                        max_length=16)[0]
    assert len(row["input_ids"]) == 16
    assert tokenizer.decode(row["input_ids"][-5:-3]) == "blue [SEP]"  # the prompt's end
    assert row["labels"][-3:] == row["input_ids"][-3:]  # cat dog [SEP]
    assert row["labels"][:-3] == [-100] * 13


def test_target_rows_pairs_position_t_with_label_t_plus_1() -> None:
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    labels = torch.tensor([[-100, -100, 2, 0], [-100, 1, -100, -100]])

    rows, targets = target_rows(logits, labels, shift=True)

    assert targets.tolist() == [2, 0, 1]
    assert torch.equal(rows, torch.stack([logits[0, 1], logits[0, 2], logits[1, 0]]))
    rows, targets = target_rows(logits, labels, shift=False)  # seq2seq: no shift
    assert targets.tolist() == [2, 0, 1]
    assert torch.equal(rows, torch.stack([logits[0, 2], logits[0, 3], logits[1, 1]]))


def test_fused_qkv_is_projected_a_third_at_a_time() -> None:
    torch.manual_seed(0)
    weight, projection = torch.randn(8, 24), torch.linalg.qr(torch.randn(8, 4))[0]

    out = transfer("transformer.h.0.attn.c_attn.weight", weight, torch.zeros(4, 12),
                   projection, teacher_width=8)

    expected = torch.cat([projection.T @ part @ projection for part in weight.chunk(3, dim=1)],
                         dim=1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_narrow_gpt2_student_from_teacher_starts_closer_than_random(teacher_dir: Path) -> None:
    teacher = GPT2LMHeadModel.from_pretrained(teacher_dir)
    with torch.no_grad():  # give the teacher structure worth keeping: low-rank embeddings
        wte = teacher.transformer.wte.weight
        wte.copy_(torch.randn(wte.shape[0], 4) @ torch.randn(4, wte.shape[1]) * 0.5)
    arch = {"num_layers": 1, "hidden_size": 16, "num_heads": 2}
    ids = lm_tokenizer()(["the red cat and the blue moon"], return_tensors="pt")["input_ids"]

    def kl_to_teacher(init: Literal["teacher", "random"]) -> float:
        torch.manual_seed(0)
        student = build_student(StudentSpec(architecture=arch, init=init), teacher,
                                task="causal-lm").eval()
        assert student.config.n_layer == 1 and student.config.n_embd == 16
        with torch.no_grad():
            p = F.log_softmax(teacher(ids).logits, -1)
            q = F.log_softmax(student(ids).logits, -1)
        return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))

    assert kl_to_teacher("teacher") < kl_to_teacher("random")
    assert principal_directions(teacher.transformer.wte.weight, 16).shape == (32, 16)


def test_pair_checks_name_the_field(teacher_dir: Path, tmp_path: Path) -> None:
    teacher = inspect_model(teacher_dir)
    small_vocab = inspect_model(save_gpt2(tmp_path / "small", vocab_size=1000))
    other_ids = permute_vocab(save_gpt2(tmp_path / "permuted"))

    assert get_task(CAUSAL_LM).check_pair(teacher, teacher) == []
    assert get_task(CAUSAL_LM).check_pair(teacher, small_vocab)[0][0] == "student.model"
    mismatch = get_task(CAUSAL_LM).check_pair(teacher, inspect_model(other_ids),
                                teacher_vocab=vocab_fingerprint(teacher_dir),
                                student_vocab=vocab_fingerprint(other_ids))
    assert mismatch and "maps tokens to ids differently" in mismatch[0][1]
    assert vocab_fingerprint(teacher_dir) == vocab_fingerprint(save_gpt2(tmp_path / "again"))

    losses = [LossSpec("kl"), LossSpec("logit"), LossSpec("hidden_mse")]
    assert [p for p, _ in get_task(CAUSAL_LM).check_pair_losses(losses, teacher, None)] == [
        "distillation.losses[1].type"]
    blank = inspect_model(teacher_dir)
    blank.num_layers = 0
    problems = get_task(CAUSAL_LM).check_pair_losses(losses[2:], teacher, blank)
    assert problems[0][0] == "distillation.losses[0].type" and "no transformer" in problems[0][1]


def test_engine_refuses_a_student_with_another_vocabulary(teacher_dir: Path,
                                                          tmp_path: Path) -> None:
    student = save_gpt2(tmp_path / "student", vocab_size=1000)
    config = _config(teacher_dir, tmp_path, student=StudentSpec(model_path=student))
    with pytest.raises(ValueError, match="vocabulary of 1000 tokens"):
        check_config(config)  # what run_job checks before it loads anything


@pytest.fixture(scope="module")
def finished(teacher_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[JobConfig, JobResult, RecordingReporter]:
    tmp = tmp_path_factory.mktemp("causal_job")
    config = _config(
        teacher_dir, tmp, validation_file=write_jsonl(tmp / "dev.jsonl", copy_records(16, seed=2)),
        teacher_finetune=FinetuneSpec(epochs=6, learning_rate=5e-3),
        losses=[LossSpec("kl", 0.5), LossSpec("ce", 0.5), LossSpec("hidden_mse", 0.1)],
    )
    recorder = RecordingReporter()
    return config, run_job(config, recorder), recorder


def test_causal_lm_job_learns_and_reports_perplexity(
    finished: tuple[JobConfig, JobResult, RecordingReporter],
) -> None:
    config, result, recorder = finished
    assert recorder.stages() == ["finetune_teacher", "distill", "evaluate", "export"]
    teacher_losses, losses = recorder.losses("finetune_loss"), recorder.losses()
    assert teacher_losses[-1] < teacher_losses[0] * 0.8
    assert losses[-1] < losses[0]
    first = next(data for _, data in recorder.metric_events if "train_loss" in data)
    assert {"loss_kl", "loss_ce", "loss_hidden_mse", "learning_rate"} <= set(first)
    per_epoch = [d["eval_perplexity"] for _, d in recorder.metric_events if "eval_perplexity" in d]
    assert len(per_epoch) == 3 and per_epoch[-1] < per_epoch[0]

    report = json.loads((config.output_dir / "report.json").read_text())
    assert report == result.report and report["metric"] == "perplexity"
    teacher, student = report["teacher"], report["student"]
    assert set(student) == {"perplexity", "parameters", "size_bytes", "latency_ms_p50",
                            "throughput_per_s"}
    assert report["retention"] == pytest.approx(teacher["perplexity"] / student["perplexity"],
                                                abs=1e-3)
    assert 1.0 < teacher["perplexity"] < 1000 and student["parameters"] < teacher["parameters"]
    assert result.labels is None and result.task == "causal-lm"
    assert result.eval_metrics["eval_perplexity"] == pytest.approx(student["perplexity"],
                                                                   abs=1e-3)
    assert "teacher_eval_perplexity" in result.eval_metrics
    # the exported student is the epoch of lowest perplexity; the fine-tuned teacher a model too
    selection = report["epoch_selection"]
    assert selection["mode"] == "best" and selection["metric"] == "perplexity"
    assert selection["value"] == min(per_epoch) == per_epoch[selection["epoch"] - 1]
    assert report["warnings"] == []  # no majority class to compare a language model with
    assert result.teacher is not None and result.teacher.report["teacher"] == teacher
    # language models serve in torch only, and the report says so
    assert report["runtimes"]["default"] == "torch" and list(report["runtimes"]["runtimes"]) == [
        "torch"]
    assert "causal-lm students run in torch only" in report["runtimes"]["reason"]
    assert report["runtimes"]["runtimes"]["torch"]["perplexity"] == student["perplexity"]
    assert not (config.output_dir / "onnx").exists()

    card = (config.output_dir / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "| Perplexity (validation) |" in card
    assert "Labels:" not in card


def test_causal_lm_export_loads_and_generates(
    finished: tuple[JobConfig, JobResult, RecordingReporter],
) -> None:
    config, _, _ = finished
    model = AutoModelForCausalLM.from_pretrained(config.output_dir).eval()
    assert model.config.n_layer == 1 and not list(config.output_dir.glob("*.bin"))

    predictor = Predictor.load(config.output_dir)
    out = predictor.generate(["copy red cat dog", "copy sun"], max_new_tokens=4)

    assert predictor.task == "causal-lm" and len(out) == 2
    assert all(isinstance(item["text"], str) for item in out)


def _config(teacher: Path, tmp: Path, **overrides: Any) -> JobConfig:
    hp = Hyperparameters(epochs=3, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=3, eval_batch_size=16)
    return toy_job(teacher, tmp, copy_records(48, seed=1), task=CAUSAL_LM, hyperparameters=hp,
                   **{"benchmark_runs": 2, **overrides})
