"""The generative methods end to end (`engine.run_job`) on the tiny chat Llama, trained for a
few seconds on the copy task so that its answers end with its end-of-turn token: sequence-level
distillation on the teacher's greedy answers, the `generate` stage resuming after a kill or a
cancel, and on-policy distillation sampling from the student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from distillation.config import (
    Cancelled,
    GenerationSpec,
    Hyperparameters,
    JobConfig,
    OnPolicySpec,
)
from distillation.engine import run_job
from distillation.layout import teacher_answers_path, teacher_cache_path
from distillation.methods import teacher_answers
from distillation.methods.on_policy import StudentSampler
from distillation.models.info import inspect_model
from distillation.tasks import CAUSAL_LM, get_task
from distillation.tasks.causal_lm import PROMPT_LENGTH, answered, encode_causal, has_answer
from distillation.tasks.token_data import TokenCollator, TokenColumns
from distillation.training.generation import Decoding, Generated, cut_at_eos
from tests.factories.jobs import toy_job
from tests.factories.lm import copy_records, save_chat_llama
from tests.factories.reporting import RecordingReporter, WorkerDied

CPU = torch.device("cpu")
MAX_NEW = 12
GENERATE = teacher_answers.generate_answers  # the real one, whatever a test patches in


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chat Llama after 200 steps on "copy a b c" → "a b c<|im_end|>" (about 3 s): its
    greedy answers have a few words and end with the end-of-turn token."""
    out = save_chat_llama(tmp_path_factory.mktemp("chat-llama"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    features = encode_causal(copy_records(200, seed=5),
                             TokenColumns(prompt="prompt", completion="completion"), tokenizer,
                             max_length=32)
    collate, optimizer = TokenCollator(tokenizer.pad_token_id), torch.optim.AdamW(
        model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows = torch.randint(0, len(features), (16,), generator=generator).tolist()
        batch = collate([features[i] for i in rows])
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              labels=batch["labels"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


def _records(n: int, *, answered_share: float = 0.5) -> list[dict[str, Any]]:
    """Copy-task prompts, the first `answered_share` with their completion, the rest without."""
    records = copy_records(n, seed=1)
    for record in records[int(n * answered_share):]:
        record["completion"] = ""
    return records


def _config(teacher: Path, tmp: Path, method: str, records: list[dict[str, Any]],
            **overrides: Any) -> JobConfig:
    hp = overrides.pop("hyperparameters", None) or Hyperparameters(
        epochs=2, batch_size=4, learning_rate=5e-3, warmup_ratio=0.0, log_every_steps=1,
        eval_batch_size=4)
    return toy_job(teacher, tmp, records, task=CAUSAL_LM, hyperparameters=hp, method=method,
                   generation=overrides.pop("generation", GenerationSpec(max_new_tokens=MAX_NEW)),
                   **overrides)


def _stored(config: JobConfig) -> dict[tuple[str, int, int], list[int]]:
    lines = teacher_answers_path(config.work_dir).read_text().splitlines()
    rows = [json.loads(line) for line in lines[1:]]
    return {(r["split"], r["example"], r["sample"]): r["ids"] for r in rows}


def _greedy(model: PreTrainedModel, prompt: list[int], eos: int) -> list[int]:
    """The teacher's answer to one prompt, straight from `generate` (no batch, no padding)."""
    out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=MAX_NEW,  # type: ignore[operator]
                         do_sample=False)
    return cut_at_eos(out[0, len(prompt):].tolist(), eos)


def test_sequence_trains_on_exactly_the_teachers_greedy_answers(
    teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given prompts, half of them with a completion of their own
    records = _records(12)
    config = _config(teacher_dir, tmp_path, "sequence", records)
    recorder = RecordingReporter()

    # When the job runs with sequence-level distillation
    result = run_job(config, recorder)

    # Then the teacher answered every prompt once, before its outputs were cached
    assert recorder.stages() == ["generate", "cache_teacher", "distill", "evaluate", "export"]
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in records]
    stored = _stored(config)
    assert sorted(stored) == [("train", i, 0) for i in range(12)]
    # and its stored answers are what `generate` writes, greedy, each ending at its end of turn
    eos = tokenizer.eos_token_id
    for i, prompt in enumerate(prompts):
        assert stored[("train", i, 0)] == _greedy(teacher, prompt, eos)
    assert all(ids[-1] == eos and 2 <= len(ids) < MAX_NEW for ids in stored.values())
    # The examples trained on are those answers: the cache holds one row per answer token, and
    # the teacher's most likely token at each is the answer's next token (greedy decoding)
    cache = torch.load(teacher_cache_path(config.work_dir), weights_only=True)["tensors"]
    lengths = (cache["offsets"][1:] - cache["offsets"][:-1]).tolist()
    assert lengths == [len(stored[("train", i, 0)]) for i in range(12)]
    top1 = cache["indices"][:, 0].tolist()
    assert top1 == [t for i in range(12) for t in stored[("train", i, 0)]]
    # Events and the report say which method ran, and how many answers at what speed
    method = result.report["method"]
    assert method["name"] == "sequence"
    assert method["teacher_answers"]["answers"] == 12 and method["teacher_answers"]["written"] == 12
    assert method["teacher_answers"]["tokens"] == sum(map(len, stored.values()))
    assert method["teacher_answers"]["tokens_per_s"] > 0
    assert result.report["training_examples"] == {"file answers": 0, "teacher answers": 12}
    assert any(m.startswith("The teacher wrote 12 answers") and "tokens/s" in m
               for m in recorder.messages)
    first = recorder.metric_events[0][1]
    assert first["teacher_answers"] == 12 and first["teacher_tokens_per_s"] > 0
    assert "generate" in result.report["stage_seconds"]


def test_token_method_answers_only_the_prompts_without_one(
    teacher_dir: Path, tmp_path: Path,
) -> None:
    records = _records(8)
    config = _config(teacher_dir, tmp_path, "token", records)
    result = run_job(config, RecordingReporter())
    assert sorted(_stored(config)) == [("train", i, 0) for i in range(4, 8)]
    assert result.report["method"]["name"] == "token"
    assert result.report["training_examples"] == {"file answers": 4, "teacher answers": 4}


def test_a_job_with_every_answer_in_its_file_has_no_generate_stage(
    teacher_dir: Path, tmp_path: Path,
) -> None:
    config = _config(teacher_dir, tmp_path, "token", _records(8, answered_share=1.0))
    recorder = RecordingReporter()
    result = run_job(config, recorder)
    assert "generate" not in recorder.stages() and "generate" not in result.report["stage_seconds"]
    assert result.report["method"] == {"name": "token", "teacher_answers": None}
    assert not teacher_answers_path(config.work_dir).exists()


class _CountingGenerate:
    """Stands in for `generate_answers` in the generate stage: counts the prompts it is given,
    and kills the worker (or asks for a stop) once it has answered `limit` batches."""

    def __init__(self, limit: int | None = None, *, stop: bool = False) -> None:
        self.limit, self.stop = limit, stop
        self.batches = 0
        self.prompts: list[list[int]] = []

    def __call__(self, model: Any, prompts: list[list[int]], *args: Any,
                 **kwargs: Any) -> Generated:
        if self.limit is not None and self.batches >= self.limit and not self.stop:
            raise WorkerDied("killed in the generate stage")
        self.batches += 1
        self.prompts += [list(p) for p in prompts]
        return GENERATE(model, prompts, *args, **kwargs)


class _StopAfter(RecordingReporter):
    def __init__(self, counter: _CountingGenerate) -> None:
        super().__init__()
        self.counter = counter

    def should_stop(self) -> bool:
        assert self.counter.limit is not None
        return self.counter.batches >= self.counter.limit


@pytest.mark.parametrize("how", ["killed", "cancelled"])
def test_the_generate_stage_resumes_where_a_killed_attempt_stopped(
    how: str, teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given 12 prompts answered 4 at a time, and an attempt that ends after 2 batches (its
    # worker killed in the third, or the job cancelled before it)
    config = _config(teacher_dir, tmp_path / "job", "sequence", _records(12, answered_share=0))
    first = _CountingGenerate(limit=2, stop=how == "cancelled")
    monkeypatch.setattr(teacher_answers, "generate_answers", first)
    with pytest.raises(Cancelled if how == "cancelled" else WorkerDied):
        run_job(config, _StopAfter(first) if how == "cancelled" else RecordingReporter())
    assert first.batches == 2 and len(_stored(config)) == 8
    # (and the worker died in the middle of writing a line)
    with teacher_answers_path(config.work_dir).open("a") as handle:
        handle.write('{"split": "train", "example": 11, "sample": 0, "ids": [3')

    # When the job runs again
    second = _CountingGenerate()
    monkeypatch.setattr(teacher_answers, "generate_answers", second)
    recorder = RecordingReporter()
    result = run_job(config, recorder)

    # Then the teacher answered only the 4 prompts the first attempt had not
    assert second.batches == 1 and len(second.prompts) == 4
    assert sorted(map(tuple, first.prompts + second.prompts)) == sorted(
        map(tuple, [p for p in _prompts(config)]))
    assert any(m.startswith("Reusing 8 answers the teacher wrote in an earlier attempt")
               for m in recorder.messages)
    answers = result.report["method"]["teacher_answers"]
    assert (answers["reused"], answers["written"], answers["answers"]) == (8, 4, 12)
    # and the answers are those of an attempt never interrupted
    whole = _config(teacher_dir, tmp_path / "whole", "sequence", _records(12, answered_share=0))
    monkeypatch.setattr(teacher_answers, "generate_answers", _CountingGenerate())
    run_job(whole, RecordingReporter())
    assert _stored(config) == _stored(whole)


def _prompts(config: JobConfig) -> list[list[int]]:
    task = get_task(CAUSAL_LM)
    data = task.prepare(config, inspect_model(config.teacher_path))
    return [f["input_ids"][: f[PROMPT_LENGTH]] for f in data.student.train]


def test_sampled_answers_make_num_samples_examples_per_prompt(
    teacher_dir: Path, tmp_path: Path,
) -> None:
    config = _config(teacher_dir, tmp_path, "sequence", _records(4, answered_share=0),
                     generation=GenerationSpec(max_new_tokens=MAX_NEW, temperature=1.0,
                                               num_samples=3),
                     hyperparameters=Hyperparameters(epochs=1, batch_size=4, eval_batch_size=8))
    result = run_job(config, RecordingReporter())
    stored = _stored(config)
    assert sorted(stored) == [("train", i, k) for i in range(4) for k in range(3)]
    assert len({tuple(ids) for ids in stored.values()}) > 4  # sampled: not all alike
    assert result.report["training_examples"] == {"file answers": 0, "teacher answers": 12}


@pytest.mark.parametrize("lambda_", [1.0, 0.0])
def test_on_policy_samples_from_the_student_with_probability_lambda(
    lambda_: float, teacher_dir: Path, tmp_path: Path,
) -> None:
    # Given 8 prompts, half with an answer, in batches of 4 for 2 epochs (4 batches)
    config = _config(teacher_dir, tmp_path, "on-policy", _records(8),
                     on_policy=OnPolicySpec(lambda_=lambda_, beta=0.5), temperature=1.0)
    recorder = RecordingReporter()

    result = run_job(config, recorder)

    # Then the teacher answered the 4 prompts without one, and was run live, not cached
    assert recorder.stages() == ["generate", "distill", "evaluate", "export"]
    assert any("Not caching the teacher's outputs: on-policy" in m for m in recorder.messages)
    # and with λ = 1 every batch's answers were the student's samples, with λ = 0 none
    samples = result.report["method"]["student_samples"]
    expected = 8 if lambda_ == 1.0 else 0
    assert samples["batches"] == 4 and samples["on_policy_batches"] == 4 * lambda_
    assert samples["answers"] == 2 * expected
    per_epoch = [d for _, d in recorder.metric_events if "student_answers" in d]
    assert [d["student_answers"] for d in per_epoch] == [expected, 2 * expected]
    if lambda_:
        assert samples["tokens"] > 0 and per_epoch[-1]["student_tokens_per_s"] > 0
    method = result.report["method"]
    assert (method["name"], method["lambda"], method["beta"]) == ("on-policy", lambda_, 0.5)
    assert method["sampling_temperature"] == 1.0
    losses = recorder.train_metrics()
    assert losses and all("loss_gjsd" in m and m["loss_gjsd"] >= 0 for m in losses)


def test_the_student_samples_in_eval_mode_without_gradients_with_its_kv_cache(
    teacher_dir: Path,
) -> None:
    # Given a student in training mode and a batch of two prompts with answers
    student = AutoModelForCausalLM.from_pretrained(teacher_dir).train()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    eos = tokenizer.eos_token_id
    seen: list[tuple[bool, bool, int]] = []  # (training, gradients, tokens fed) per forward

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append((module.training, torch.is_grad_enabled(), kwargs["input_ids"].shape[1]))

    student.register_forward_pre_hook(hook, with_kwargs=True)
    collator = TokenCollator(tokenizer.pad_token_id)
    rows = [answered(tokenizer("copy red cat sun")["input_ids"], [5, 6, eos]),
            answered(tokenizer("copy one")["input_ids"], [7, eos])]
    sampler = StudentSampler(student, collator, lambda_=1.0, decoding=Decoding(MAX_NEW, 1.0),
                             eos_id=eos, pad_id=tokenizer.pad_token_id, max_length=32, device=CPU)

    # When the sampler prepares the batch
    torch.manual_seed(0)
    batch = sampler(collator(rows))

    # Then the student generated in eval mode, without gradients, feeding the prompts once and
    # then one new token a step (the rest from its KV cache), and is back in training mode
    assert len(seen) > 1 and all(not training and not grad for training, grad, _ in seen)
    assert seen[0][2] > 1 and all(fed == 1 for _, _, fed in seen[1:])
    assert student.training
    # and the batch holds the same prompts with the student's answers, the loss on them only
    for row in range(2):
        n = int(batch[PROMPT_LENGTH][row])
        assert batch["input_ids"][row, :n].tolist() == rows[row]["input_ids"][:n]
        labels = batch["labels"][row].tolist()
        assert all(label == -100 for label in labels[:n])
        answer = [t for t in labels[n:] if t != -100]
        assert answer and (answer[-1] == eos or len(answer) == MAX_NEW)
        assert eos not in answer[:-1]
    assert sampler.stats.answers == 2 and sampler.stats.on_policy_batches == 1


def test_prompt_only_records_are_prompts_without_an_answer() -> None:
    from tests.factories.lm import chat_tokenizer

    tokenizer = chat_tokenizer()
    columns = TokenColumns(prompt="prompt", completion="completion")
    features = encode_causal([{"prompt": "copy red cat", "completion": ""},
                              {"prompt": "copy red cat"},
                              {"prompt": "copy red cat", "completion": "red cat"}],
                             columns, tokenizer, max_length=32)
    prompt = tokenizer("copy red cat")["input_ids"]
    for features_ in features[:2]:
        assert features_["input_ids"] == prompt and features_[PROMPT_LENGTH] == len(prompt)
        assert set(features_["labels"]) == {-100} and not has_answer(features_)
    assert features[2][PROMPT_LENGTH] == len(prompt) and has_answer(features[2])


def test_fine_tuning_a_teacher_on_prompts_without_answers_learns_nothing_rather_than_nan(
    teacher_dir: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    batch = TokenCollator(tokenizer.pad_token_id)(
        [answered(tokenizer("copy red cat")["input_ids"], [])])
    loss = get_task(CAUSAL_LM).finetune_loss(model, batch)
    assert loss.item() == 0.0 and loss.requires_grad
