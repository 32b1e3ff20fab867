"""A student sized to a target: the candidates, the exact parameter counts, the pick, and the
explanation when no candidate can meet the target."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from distillation.config import Hyperparameters, StudentSpec
from distillation.engine import run_job
from distillation.students.sizing import (
    Candidate,
    TargetUnreachable,
    architectures,
    check_target,
    count,
    pick,
    teacher_parameters,
)
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records
from tests.factories.reporting import RecordingReporter


def teacher_config(vocab: int = 1000) -> BertConfig:
    return BertConfig(vocab_size=vocab, hidden_size=96, num_hidden_layers=4,
                      num_attention_heads=3, intermediate_size=384, num_labels=2)


def test_candidates_are_smaller_copies_with_whole_heads() -> None:
    shapes = architectures(teacher_config())

    assert (4, 96) not in {(c.num_layers, c.hidden_size) for c in shapes}  # not the teacher
    assert {c.num_layers for c in shapes} == {1, 2, 3, 4}
    for c in shapes:
        assert c.hidden_size % 32 == 0 and c.num_heads == c.hidden_size // 32
        assert c.intermediate_size == 4 * c.hidden_size


def test_parameter_counts_are_exact() -> None:
    config = teacher_config()
    candidate = count(config, Candidate(2, 64, 2, 256), vocab_size=300)
    built = AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=256, num_labels=2))

    assert candidate.parameters == sum(p.numel() for p in built.parameters())
    assert candidate.embedding_parameters == 300 * 64
    assert teacher_parameters(config) == sum(
        p.numel() for p in AutoModelForSequenceClassification.from_config(config).parameters())


def test_pick_meets_the_compression_and_prefers_width() -> None:
    config = teacher_config()
    total = teacher_parameters(config)

    chosen, report = pick(config, {"compression": 3}, vocab_size=1000)

    assert chosen.parameters <= total / 3
    assert report["chosen"]["compression"] >= 3 and "widest" in report["why"]
    wider = [c for c in (count(config, c, 1000) for c in architectures(config))
             if c.hidden_size > chosen.hidden_size and c.parameters <= total / 3]
    assert wider == []
    # A pruned vocabulary leaves room for a wider or deeper student at the same target.
    pruned, _ = pick(config, {"compression": 3}, vocab_size=200)
    assert (pruned.hidden_size, pruned.num_layers) > (chosen.hidden_size, chosen.num_layers)


def test_scores_pick_among_feasible_candidates() -> None:
    config = teacher_config()
    total = teacher_parameters(config)

    def deepest_narrowest(c: Candidate) -> float:  # a score that prefers the opposite of width
        return c.num_layers - c.hidden_size / 1000

    chosen, report = pick(config, {"compression": 3}, vocab_size=1000,
                          score_fn=deepest_narrowest)

    assert chosen.parameters <= total / 3 and chosen.hidden_size == 32
    assert "agrees most with the teacher" in report["why"]
    assert report["agreement_at_init"][f"{chosen.num_layers}x32"] == max(
        report["agreement_at_init"].values())


def test_a_compression_target_scores_only_candidates_that_use_half_its_budget() -> None:
    # Given a score that prefers the smallest student (as agreement at init can prefer a deep,
    # narrow one far below the budget)
    config = teacher_config()
    budget = teacher_parameters(config) / 3

    def smallest(c: Candidate) -> float:
        return -c.parameters

    chosen, report = pick(config, {"compression": 3}, vocab_size=1000, score_fn=smallest)
    all_feasible = [c for c in architectures(config)
                    if count(config, c, 1000).parameters <= budget]

    # Then the pick is the smallest of those with at least half the budget, never one below it
    scored = report["agreement_at_init"]
    assert chosen.parameters >= 0.5 * budget
    assert len(scored) < len(all_feasible)  # some feasible candidates were too small to score
    assert all(count(config, c, 1000).parameters >= 0.5 * budget for c in all_feasible
               if f"{c.num_layers}x{c.hidden_size}" in scored)
    assert "at least 50% of its parameter budget" in report["why"]


def test_hidden_state_directions_are_an_orthonormal_basis(tiny_teacher_dir: Path) -> None:
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from distillation.students.directions import hidden_state_directions

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    features = [dict(tokenizer(r["text"])) for r in sentiment_records(40)]

    basis = hidden_state_directions(teacher, features, DataCollatorWithPadding(tokenizer),
                                    device=torch.device("cpu"))

    assert basis is not None and basis.shape == (32, 32)
    assert torch.allclose(basis.T @ basis, torch.eye(32), atol=1e-4)


def test_latency_target_uses_measured_times() -> None:
    config = teacher_config()

    def fake_measure(_: object, c: Candidate) -> Candidate:  # 1 ms per layer, as measured
        return Candidate(**{**c.__dict__, "latency_ms": float(c.num_layers)})

    chosen, report = pick(config, {"max_latency_ms": 2.5}, vocab_size=1000,
                          measure_fn=fake_measure)

    assert chosen.num_layers == 2 and chosen.hidden_size == 96
    assert report["chosen"]["latency_ms"] == 2.0
    with pytest.raises(TargetUnreachable, match="fastest candidate, 1 layers") as caught:
        pick(config, {"max_latency_ms": 0.5}, vocab_size=1000, measure_fn=fake_measure)
    assert caught.value.param == "student.target.max_latency_ms"


def test_unreachable_compression_names_the_closest_candidate() -> None:
    with pytest.raises(TargetUnreachable) as caught:
        check_target(teacher_config(), {"compression": 500}, vocab_size=1000)

    message = str(caught.value)
    assert caught.value.param == "student.target.compression"
    assert "smallest candidate, 1 layers × 32" in message and "prune_vocabulary" in message
    with pytest.raises(TargetUnreachable, match="cannot be met on this machine"):
        check_target(teacher_config(), {"max_latency_ms": 1e-6}, vocab_size=1000)
    check_target(teacher_config(), {"compression": 2, "max_latency_ms": 10_000}, vocab_size=1000)


def test_job_sized_to_a_target(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    config = toy_job(tiny_teacher_dir, tmp_path, sentiment_records(16),
                     hyperparameters=Hyperparameters(epochs=1, batch_size=8, max_steps=2),
                     student=StudentSpec(target={"compression": 4}))
    recorder = RecordingReporter()

    result = run_job(config, recorder)

    selection = result.report["student_selection"]
    assert selection["target"] == {"compression": 4}
    # Unset prune_vocabulary with a target prunes: the toy data use a few dozen ids.
    assert result.report["vocabulary"]["pruned_to"] < 200
    assert selection["vocab_size"] == result.report["vocabulary"]["pruned_to"]
    assert result.report["compression"] >= 4
    student = AutoModelForSequenceClassification.from_pretrained(config.output_dir)
    assert student.config.num_hidden_layers == selection["chosen"]["num_layers"]
    assert student.config.hidden_size == selection["chosen"]["hidden_size"]
    assert any(m.startswith("Sized the student") for m in recorder.messages)
    # Every feasible shape was built from the teacher and scored against it; the best one won.
    scores = selection["agreement_at_init"]
    chosen = f"{selection['chosen']['num_layers']}x{selection['chosen']['hidden_size']}"
    assert len(scores) == selection["feasible"] and scores[chosen] == max(scores.values())
    assert torch.isfinite(torch.tensor(result.train_loss or 0.0))
