"""Student construction: architecture checks, layer choice, teacher-initialised weights, and a
student directory with a tokenizer of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    PreTrainedTokenizerFast,
)

from distillation.config import Hyperparameters, JobConfig, LossSpec, StudentSpec
from distillation.engine import run_job
from distillation.export.predict import Predictor
from distillation.losses.layer_map import even_spread
from distillation.models.info import inspect_model
from distillation.students.build import build_student, check_architecture, principal_directions
from tests.factories.records import FILLER, NEGATIVE, POSITIVE, sentiment_records, write_jsonl
from tests.factories.reporting import RecordingReporter


def _teacher(**overrides: Any) -> BertForSequenceClassification:
    torch.manual_seed(0)
    values: dict[str, Any] = {"vocab_size": 200, "hidden_size": 32, "num_hidden_layers": 4,
              "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
              **overrides}
    config = BertConfig(**values)
    config.id2label, config.label2id = {0: "no", 1: "yes"}, {"no": 0, "yes": 1}
    return BertForSequenceClassification(config).eval()


def test_even_spread_ends_at_the_last_layer() -> None:
    assert even_spread(3, 6) == [1, 3, 5]
    assert even_spread(1, 2) == [1]
    assert even_spread(4, 12) == [2, 5, 8, 11]
    assert even_spread(6, 6) == [0, 1, 2, 3, 4, 5]
    assert even_spread(4, 2) == [0, 0, 1, 1]


def test_check_architecture(tiny_teacher_dir: Path) -> None:
    info = inspect_model(tiny_teacher_dir)  # width 32, 2 heads
    assert check_architecture({"num_layers": 1, "hidden_size": 16}, info) == []
    assert check_architecture({"num_layers": 8}, info) == []  # deeper than the teacher: allowed
    problems = dict(check_architecture({"hidden_size": 30, "num_heads": 4}, info))
    assert problems == {"student.architecture.hidden_size":
                        "student.architecture: hidden_size 30 is not divisible by num_heads 4"}
    assert check_architecture({"num_heads": 5}, info)[0][0] == "student.architecture.num_heads"
    assert check_architecture({"hidden_size": 33}, info)[0][0] == "student.architecture.hidden_size"
    problems = dict(check_architecture({"num_layers": 0, "intermediate_size": -5,
                                        "hidden_size": True, "depth": 2}, info))  # type: ignore[dict-item]
    assert set(problems) == {f"student.architecture.{k}" for k in
                             ("num_layers", "intermediate_size", "hidden_size", "depth")}
    assert "between 1 and" in problems["student.architecture.num_layers"]
    assert "unknown key" in problems["student.architecture.depth"]


def test_same_width_student_copies_spread_layers() -> None:
    teacher = _teacher()
    student = build_student(StudentSpec(architecture={"num_layers": 2}), teacher)
    assert student.config.num_hidden_layers == 2
    assert student.config.id2label == {0: "no", 1: "yes"}
    s, t = student.state_dict(), teacher.state_dict()
    for i, j in enumerate(even_spread(2, 4)):  # layers 1 and 3
        key = "bert.encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(s[key.format(i)], t[key.format(j)])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"],
                       t["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])

    random = build_student(StudentSpec(architecture={"num_layers": 2}, init="random"), teacher)
    assert not torch.equal(random.state_dict()["classifier.weight"], t["classifier.weight"])


def test_narrow_student_is_a_pca_projection() -> None:
    teacher = _teacher()
    arch = {"num_layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 48}
    student = build_student(StudentSpec(architecture=arch), teacher)
    s, t = student.state_dict(), teacher.state_dict()
    p = principal_directions(t["bert.embeddings.word_embeddings.weight"], 16)
    assert torch.allclose(p.T @ p, torch.eye(16), atol=1e-4)  # orthonormal directions
    assert torch.allclose(s["bert.embeddings.word_embeddings.weight"],
                          t["bert.embeddings.word_embeddings.weight"] @ p, atol=1e-5)
    query = "bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.allclose(s[query.format(0)], p.T @ t[query.format(1)] @ p, atol=1e-5)
    # The feed-forward width is cut to size, its input side projected.
    ffn = "bert.encoder.layer.{}.intermediate.dense.weight"
    assert s[ffn.format(1)].shape == (48, 16)
    assert torch.allclose(s[ffn.format(1)], (t[ffn.format(3)] @ p)[:48], atol=1e-5)
    assert torch.allclose(s["classifier.weight"], t["classifier.weight"] @ p, atol=1e-5)


def _own_tokenizer_student(path: Path) -> Path:
    """A width-16 base BERT with a small word-level tokenizer unlike the teacher's."""
    words = sorted(set(FILLER + POSITIVE + NEGATIVE))
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3} | {w: i + 4 for i, w in
                                                                enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tokenizer.post_processor = processors.TemplateProcessing(  # type: ignore[assignment]
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", model_max_length=64,
    ).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=64)).save_pretrained(path)
    return path


def test_student_directory_with_its_own_tokenizer(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    student_dir = _own_tokenizer_student(tmp_path / "student")
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_records(16))
    config = JobConfig(
        task="sequence-classification", teacher_path=tiny_teacher_dir,
        student=StudentSpec(model_path=student_dir), train_file=train,
        output_dir=tmp_path / "out", work_dir=tmp_path / "work",
        hyperparameters=Hyperparameters(epochs=1, batch_size=8, learning_rate=1e-3),
        benchmark_runs=1,
    )

    result = run_job(config, RecordingReporter())

    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert model.config.vocab_size == 4 + len(set(FILLER + POSITIVE + NEGATIVE))
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert "superb" in AutoTokenizer.from_pretrained(result.model_dir).get_vocab()
    assert Predictor.load(result.model_dir).classify(["a superb film"])[0]["label"] in (
        "negative", "positive")

    config.losses = [LossSpec("hidden_mse")]  # refused by run_job's checks, as by the API's
    with pytest.raises(ValueError, match="tokenises differently from the teacher; use a "
                                         "student with the teacher's tokenizer"):
        run_job(config, RecordingReporter())
