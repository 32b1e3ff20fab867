"""Predictor: classification scores from a saved classifier, greedy text from tiny LMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)

from distillation.export.predict import Predictor


def test_classify_matches_model_softmax(tiny_teacher_dir: Path) -> None:
    predictor = Predictor.load(tiny_teacher_dir)
    assert predictor.task == "sequence-classification"
    assert predictor.labels == ["negative", "positive"]

    texts = ["a good film", "a really dull and boring plot that goes on"]
    results = predictor.classify(texts)

    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    with torch.no_grad():
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        probs = torch.softmax(model(**encoded).logits, -1)
    for result, row in zip(results, probs, strict=True):
        assert set(result["scores"]) == {"negative", "positive"}
        assert result["scores"]["positive"] == pytest.approx(float(row[1]), abs=1e-5)
        assert result["score"] == pytest.approx(float(row.max()), abs=1e-5)
        assert result["label"] == ["negative", "positive"][int(row.argmax())]


def test_classify_pairs_and_mixed_order(tiny_teacher_dir: Path) -> None:
    predictor = Predictor.load(tiny_teacher_dir)
    mixed = predictor.classify(["one", ("two", "three"), ["four", "five"], "six " * 400])
    alone = predictor.classify([("two", "three")])
    assert len(mixed) == 4
    assert mixed[1]["scores"] == pytest.approx(alone[0]["scores"])
    with pytest.raises(ValueError, match="needs a causal-lm or seq2seq"):
        predictor.generate(["x"], max_new_tokens=2)


def test_base_model_has_no_task_head(tiny_base_dir: Path) -> None:
    with pytest.raises(ValueError, match="has no task head"):
        Predictor.load(tiny_base_dir)


def _save_lm(model: torch.nn.Module, tokenizer_dir: Path, out: Path) -> Path:
    model.save_pretrained(out, safe_serialization=True)  # type: ignore[operator]
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def test_generate_causal_and_seq2seq(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(
        vocab_size=30522, n_embd=16, n_layer=1, n_head=2, n_positions=64,
        bos_token_id=101, eos_token_id=102,
    ))
    causal = Predictor.load(_save_lm(gpt, tiny_teacher_dir, tmp_path / "gpt"))
    tokens: dict[str, Any] = {"decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 102}
    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=30522, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, **tokens)
    )
    seq2seq = Predictor.load(_save_lm(t5, tiny_teacher_dir, tmp_path / "t5"))

    for predictor, task in ((causal, "causal-lm"), (seq2seq, "seq2seq")):
        assert predictor.task == task and predictor.labels is None
        out = predictor.generate(["the film was", "a longer prompt than the first one"], 3)
        assert len(out) == 2 and all(isinstance(o["text"], str) for o in out)
        # Greedy: the same prompt gives the same text.
        assert predictor.generate(["the film was"], 3) == out[:1]
    with pytest.raises(ValueError, match="needs a sequence-classification"):
        causal.classify(["x"])
