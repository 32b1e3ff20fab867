"""Learning from texts no one labelled: the augmentation rules, and a job that distils on a
transfer file and augmented texts beside its labelled rows."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distillation.config import AugmentSpec, Hyperparameters, LossSpec
from distillation.data.augment import Augmenter, check_augmentation
from distillation.engine import run_job
from distillation.layout import teacher_cache_path
from distillation.losses.functions import CELoss, LossInputs
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records, write_jsonl
from tests.factories.reporting import RecordingReporter

CORPUS = ["a moving and funny film", "the plot is dull", "superb acting throughout the story"]


def test_each_rule_draws_what_it_says() -> None:
    sources = ["one two three four five six seven eight"]
    masked = Augmenter(AugmentSpec(("mask",), 30, p_mask=0.5), CORPUS, mask_token="[MASK]",
                       seed=0).texts(sources)
    replaced = Augmenter(AugmentSpec(("replace",), 30, p_replace=0.5), CORPUS, mask_token=None,
                         seed=0).texts(sources)
    grams = Augmenter(AugmentSpec(("ngram",), 30), CORPUS, mask_token=None, seed=0).texts(sources)
    words = sources[0].split()
    corpus_words = {w for text in CORPUS for w in text.split()}

    for _, text in masked:  # same length, some words masked, the rest in place
        new = text.split()
        assert len(new) == len(words) and "[MASK]" in new
        assert all(a in (b, "[MASK]") for a, b in zip(new, words, strict=True))
    for _, text in replaced:  # same length, every changed word from the corpus
        new = text.split()
        assert len(new) == len(words)
        assert all(a == b or a in corpus_words for a, b in zip(new, words, strict=True))
    for _, text in grams:  # a window of one to five consecutive words
        assert 1 <= len(text.split()) <= 5 and text in sources[0]
    assert len({t for _, t in grams}) > 10  # not one window drawn thirty times


def test_draws_are_reproducible_by_seed() -> None:
    spec = AugmentSpec(("mask", "replace", "ngram"), 4)

    def draw(seed: int) -> list[tuple[int, str]]:
        return Augmenter(spec, CORPUS, mask_token="[MASK]", seed=seed).texts(CORPUS)

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert {i for i, _ in draw(1)} == {0, 1, 2} and len(draw(1)) <= 12


def test_bad_requests_name_the_field() -> None:
    assert [p for p, _ in check_augmentation(["mask", "shuffle"], 2)] == ["augmentation.methods"]
    assert [p for p, _ in check_augmentation(["ngram"], 0)] == ["augmentation.multiplier"]
    assert check_augmentation(["ngram", "mask"], 8) == []


def test_hard_label_loss_skips_unlabelled_rows() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]], requires_grad=True)
    labelled = CELoss()(LossInputs(student_logits=logits, teacher_logits=logits,
                                   labels=torch.tensor([0, -100, 1])))
    nobody = CELoss()(LossInputs(student_logits=logits, teacher_logits=logits,
                                 labels=torch.tensor([-100, -100, -100])))
    nobody.backward()

    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([0, 1]))
    assert torch.allclose(labelled, expected)
    assert nobody.item() == 0.0 and logits.grad is not None
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_job_distils_on_transfer_and_augmented_texts(tiny_teacher_dir: Path,
                                                     tmp_path: Path) -> None:
    texts = [{"text": r["text"]} for r in sentiment_records(40, seed=5)]
    config = toy_job(
        tiny_teacher_dir, tmp_path, sentiment_records(16),
        hyperparameters=Hyperparameters(epochs=2, batch_size=8, learning_rate=1e-3,
                                        log_every_steps=5, seed=3),
        transfer_file=write_jsonl(tmp_path / "texts.jsonl", texts),
        augmentation=AugmentSpec(("mask", "ngram"), 2),
        losses=[LossSpec("kl", 0.5), LossSpec("ce", 0.5)],
    )
    recorder = RecordingReporter()

    result = run_job(config, recorder)

    counts = result.report["training_examples"]
    assert counts["labelled"] == 16 and counts["transfer"] == 40
    assert 40 < counts["augmented"] <= 2 * 56  # up to two per text, a few draws change nothing
    total = sum(counts.values())
    # The teacher labelled every example once, in its cache: one row of logits each.
    cache = torch.load(teacher_cache_path(config.work_dir), weights_only=True)
    assert cache["tensors"]["logits"].shape[0] == total
    assert any(f"{total:,} examples (16 labelled, 40 transfer" in m for m in recorder.messages)
    assert result.train_loss is not None and result.train_loss == result.train_loss  # not NaN
    report = json.loads((config.output_dir / "report.json").read_text())
    assert set(report["stage_seconds"]) >= {"prepare_data", "distill", "evaluate", "export"}
