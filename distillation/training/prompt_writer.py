"""The `generate_data` stage: the teacher writes new training prompts from the job's task
description and examples (`DataGenerationSpec`), and the ones kept become prompt-only examples
(`prompt_length` = all their tokens, every label −100) that the teacher then answers.

Each request is a chat to the teacher asking for ONE new prompt (`data.generated`); requests go
in batches of `BATCH_SIZE`, left-padded, sampled at the spec's temperature (0: greedy) with the
KV cache (`generate`), the random state seeded by the job's seed and the batch's first request,
so a resumed attempt asks and samples as the first one would have. A reply may take at most the
prompt budget (`prompt_budget`: half the job's max length, so that the answer keeps the other
half, as a file's prompt + completion record does); one cut off there is `too_long`.

Every reply is kept in the work folder as soon as its batch is done (`layout.GENERATED_PROMPTS`,
rewritten whole and renamed into place), with a header saying what it was written from (task,
examples, temperature, seed, budget, teacher): a later attempt of the job re-judges those and
writes only what is missing. The stage stops once `num_samples` prompts are kept or after
`ATTEMPTS_PER_SAMPLE` × `num_samples` replies, and says which; a stop request is honoured
between batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distillation.config import DataGenerationSpec, DataSpec, Reporter
from distillation.data.generated import (
    REASONS,
    Examples,
    PromptFilter,
    draw_shots,
    generated_records,
    prompt_messages,
    read_examples,
    request_messages,
    tidy_reply,
    write_jsonl,
)
from distillation.data.records import read_file
from distillation.layout import generated_prompts_path
from distillation.training.generation import Decoding, generate_answers, pad_id_of
from distillation.training.loop import Features, Tracker, check_stop
from distillation.training.teacher_cache import teacher_identity

STORE_VERSION = 1
BATCH_SIZE = 16
ATTEMPTS_PER_SAMPLE = 3
IGNORE_INDEX = -100


def generation_examples(spec: DataGenerationSpec, *, task: str,
                        tokenizer: PreTrainedTokenizerBase, data_spec: DataSpec) -> Examples:
    """The examples the teacher imitates, checked before the teacher is loaded (ValueError
    naming what is wrong: the task, a teacher without a chat template, the examples file)."""
    if task != "causal-lm":
        raise ValueError(f"data_generation is for causal-lm jobs, not {task}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data_generation needs a chat model: the teacher's tokenizer has no "
                         "chat template")
    if spec.num_samples < 1:
        raise ValueError(f"data_generation.num_samples must be at least 1, got "
                         f"{spec.num_samples}")
    return read_examples(read_file(spec.examples_file).records, data_spec,
                         name=spec.examples_file.name)


def prompt_budget(max_length: int) -> int:
    """The most teacher tokens a written prompt may take (the answer keeps the rest)."""
    return max(1, max_length // 2)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None) -> list[int]:
    """The ids the models read for a prompt-only chat record: the chat template applied, ending
    with the start of the assistant's turn."""
    text = tokenizer.apply_chat_template(prompt_messages(prompt, system), tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def prompt_features(ids: list[int]) -> Features:
    """A prompt without an answer yet: `len(input_ids) == prompt_length`, no target token."""
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": [IGNORE_INDEX] * len(ids), "prompt_length": len(ids)}


@dataclass
class WrittenPrompts:
    """What the stage leaves: the prompts kept (in order), as features too, and its counts."""

    prompts: list[str]
    features: list[Features]
    system: str | None
    summary: dict[str, Any]

    def message(self) -> str:
        s = self.summary
        dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in s["dropped"].items()
                            if n)
        text = (f"The teacher wrote {s['written']} prompts: kept {s['kept']}, dropped "
                f"{s['written'] - s['kept']}{f' ({dropped})' if dropped else ''}.")
        if s["kept"] < s["requested"]:
            text += (f" Stopped after {s['written']} replies (at most {s['max_replies']}) with "
                     f"{s['kept']} of the {s['requested']} prompts asked for.")
        return text


def _header(teacher: PreTrainedModel, spec: DataGenerationSpec, examples: Examples, *,
            seed: int, budget: int, batch_size: int) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps([examples.prompts, examples.system]).encode()).hexdigest()
    return {"version": STORE_VERSION, "task_description": spec.task_description,
            "examples": digest, "temperature": spec.temperature, "seed": seed,
            "max_prompt_tokens": budget, "batch_size": batch_size,
            "teacher": teacher_identity(teacher)}


def _load_replies(path: Path, header: dict[str, Any]) -> list[dict[str, Any]]:
    """The replies an earlier attempt stored for the same request, else none."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(saved, dict) or saved.get("header") != header:
        return []
    replies = saved.get("replies")
    if not isinstance(replies, list) or not all(
            isinstance(r, dict) and isinstance(r.get("text"), str) for r in replies):
        return []
    return replies


def _save_replies(path: Path, header: dict[str, Any], replies: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".tmp-{path.name}")
    partial.write_text(json.dumps({"header": header, "replies": replies}, ensure_ascii=False),
                       encoding="utf-8")
    os.replace(partial, path)  # a worker killed mid-write leaves the last whole version


def _write_batch(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 spec: DataGenerationSpec, examples: Examples, *, start: int, count: int,
                 seed: int, budget: int, device: torch.device) -> list[dict[str, Any]]:
    """The teacher's replies to requests `start` … `start + count − 1`, each with whether it
    ended by itself (an end-of-turn token) rather than at the budget."""
    rows = []
    for index in range(start, start + count):
        shots = draw_shots(examples.prompts, seed=seed, index=index)
        text = tokenizer.apply_chat_template(request_messages(spec.task_description, shots),
                                             tokenize=False, add_generation_prompt=True)
        rows.append(list(tokenizer(str(text), add_special_tokens=False)["input_ids"]))
    eos, pad = tokenizer.eos_token_id, pad_id_of(tokenizer)
    # top_p 1 and no top-k: the teacher's whole distribution at `temperature` (0: greedy).
    decoding = Decoding(max_new_tokens=budget, temperature=spec.temperature)
    torch.manual_seed(seed + start)
    written = generate_answers(teacher, rows, decoding, eos_id=eos, pad_id=pad, device=device)
    replies = []
    for row in written.answers:
        finished = eos in row
        tokens = row[:row.index(eos)] if finished else row
        replies.append({"text": str(tokenizer.decode(tokens, skip_special_tokens=True)),
                        "finished": finished})
    return replies


def write_prompts(
    teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec: DataGenerationSpec,
    examples: Examples, *, max_length: int, seed: int, work_dir: Path, device: torch.device,
    reporter: Reporter, batch_size: int = BATCH_SIZE,
) -> WrittenPrompts:
    """Have the teacher write prompts until `spec.num_samples` are kept or the replies run out
    (see the module notes); resumes from the replies stored in `work_dir`."""
    budget = prompt_budget(max_length)
    wanted, most = spec.num_samples, ATTEMPTS_PER_SAMPLE * spec.num_samples
    path = generated_prompts_path(work_dir)
    header = _header(teacher, spec, examples, seed=seed, budget=budget, batch_size=batch_size)
    replies = _load_replies(path, header)
    if replies:
        reporter.message(f"Reusing the {len(replies)} prompts the teacher wrote in an earlier "
                         "attempt of this job.")
    cleaner = PromptFilter(examples.prompts, max_tokens=budget)
    features: list[Features] = []

    def judge(reply: dict[str, Any]) -> None:
        prompt = tidy_reply(reply["text"])
        ids = encode_prompt(tokenizer, prompt, examples.system)
        if cleaner.verdict(prompt, len(ids) if reply.get("finished") else budget + 1) is None:
            features.append(prompt_features(ids))

    for reply in replies:
        if len(cleaner.kept) < wanted:
            judge(reply)
    replies = replies[:len(cleaner.kept) + sum(cleaner.dropped.values())]
    tracker = Tracker(reporter, "generate_data", wanted, start=len(cleaner.kept))
    teacher.eval()
    while len(cleaner.kept) < wanted and len(replies) < most:
        check_stop(reporter)
        count = min(batch_size, most - len(replies), wanted - len(cleaner.kept))
        batch = _write_batch(teacher, tokenizer, spec, examples, start=len(replies), count=count,
                             seed=seed, budget=budget, device=device)
        replies.extend(batch)
        _save_replies(path, header, replies)
        for reply in batch:
            judge(reply)
        tracker.report(len(cleaner.kept), 0)
    tracker.done(0)
    summary = {"requested": wanted, "written": len(replies), "kept": len(cleaner.kept),
               "dropped": {reason: cleaner.dropped.get(reason, 0) for reason in REASONS},
               "max_replies": most, "temperature": spec.temperature,
               "max_prompt_tokens": budget}
    return WrittenPrompts(prompts=list(cleaner.kept), features=features, system=examples.system,
                          summary=summary)


def answers_by_prompt(written: WrittenPrompts, features: list[Features],
                      tokenizer: PreTrainedTokenizerBase) -> dict[str, list[str]]:
    """The answers the training examples hold for the written prompts (an example is one of
    theirs when its first `prompt_length` ids are a kept prompt's), decoded."""
    by_ids = {tuple(f["input_ids"]): p for p, f in zip(written.prompts, written.features,
                                                        strict=True)}
    answers: dict[str, list[str]] = {}
    for row in features:
        length = row.get("prompt_length")
        if not isinstance(length, int) or len(row["input_ids"]) <= length:
            continue
        prompt = by_ids.get(tuple(row["input_ids"][:length]))
        if prompt is not None:
            answer = str(tokenizer.decode(row["input_ids"][length:], skip_special_tokens=True))
            answers.setdefault(prompt, []).append(answer.strip())
    return answers


def save_generated_set(path: Path, written: WrittenPrompts, features: list[Features],
                       tokenizer: PreTrainedTokenizerBase) -> Path | None:
    """Write the generated set to `path` as JSONL `messages` records (the prompt, and the
    teacher's answer where `features` hold one); None, and nothing written, when no prompt was
    kept."""
    if not written.prompts:
        return None
    answers = answers_by_prompt(written, features, tokenizer)
    write_jsonl(path, generated_records(written.prompts, answers, written.system))
    return path
