"""The `generate` stage: the teacher writes answers to the job's prompts, once, before its
outputs are cached and the student trains on them.

Which prompts: every training prompt for sequence-level distillation (`every_prompt`), else
only the prompts that came without an answer (a chat ending with the user's turn, a prompt with
an empty completion); evaluation prompts without an answer get the teacher's greedy answer,
so the student's perplexity is measured on something. Each answer becomes an example of its own:
the prompt, then the answer (closed by the end-of-sequence token when the teacher wrote one
within `generation.max_new_tokens`), the loss on the answer; `generation.num_samples` answers to
a training prompt make as many examples.

How: batches of prompts of about one length (sorted by length, so left padding is short), the
KV cache, the job's decoding settings (`training.generation`); a sampled batch draws from a
generator seeded by the job's seed and the batch's first answer, so it does not depend on what
ran before it. Each batch's answers are appended to the work folder's answers file
(`answer_store`) before the next batch starts, and a stop asked for by the reporter is honoured
between batches: a killed or cancelled attempt leaves what it wrote, and the next attempt of
the job generates only the rest.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from distillation.config import JobConfig, Reporter
from distillation.layout import teacher_answers_path
from distillation.methods.answer_store import AnswerStore, Key
from distillation.tasks import TaskData
from distillation.tasks.base import TRAIN_EVAL_LIMIT
from distillation.tasks.causal_lm import answered, has_answer, prompt_of
from distillation.tasks.token_data import PROMPT_LENGTH, pad_token_id
from distillation.training.generation import Decoding, generate_answers
from distillation.training.loop import Features, Tracker, check_stop
from distillation.training.teacher_cache import teacher_identity

STORE_VERSION = 1
TRAIN, EVALUATION = "train", "evaluation"


@dataclass
class AnswerStats:
    """What the stage did: answers in all, and what this attempt wrote and how fast."""

    prompts: int = 0  # prompts the teacher answered (an earlier attempt's included)
    answers: int = 0  # answers in all (num_samples per training prompt)
    reused: int = 0  # answers an earlier attempt of the job wrote
    written: int = 0  # answers this attempt wrote ...
    tokens: int = 0  # ... their tokens
    seconds: float = 0.0  # ... and the time it took
    unfinished: int = 0  # answers that reached max_new_tokens before the end-of-sequence token
    dropped: int = 0  # empty answers (a prompt with no room left): no example

    @property
    def tokens_per_s(self) -> float:
        return round(self.tokens / self.seconds, 1) if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "answers": self.answers, "reused": self.reused,
                "written": self.written, "tokens": self.tokens,
                "seconds": round(self.seconds, 2), "tokens_per_s": self.tokens_per_s,
                "unfinished": self.unfinished, "dropped": self.dropped}


@dataclass(frozen=True)
class _Work:
    key: Key
    prompt: list[int]
    greedy_only: bool  # evaluation references are the teacher's greedy answers


def _fingerprint(prompts: Sequence[Sequence[int]]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps(list(prompt)).encode())
        digest.update(b"|")
    return digest.hexdigest()


def answer_prompts(
    config: JobConfig, data: TaskData, teacher: nn.Module, *, every_prompt: bool,
    device: torch.device, reporter: Reporter,
) -> tuple[TaskData, AnswerStats | None]:
    """The data with the teacher's answers in place (see the module notes), and what the stage
    did; the data unchanged and None when no prompt needs an answer."""
    side = data.student
    if data.separate_tokenizers or any(PROMPT_LENGTH not in f for f in side.train[:1]):
        return data, None
    samples = config.generation.num_samples
    train = [i for i, f in enumerate(side.train)
             if f[PROMPT_LENGTH] > 0 and (every_prompt or not has_answer(f))]
    # Without a validation file the evaluation examples are training examples: they become
    # the answered training examples below, rather than being answered twice.
    reuse_train = data.eval_split == "train" and bool(train)
    evaluation = [] if reuse_train else [
        i for i, f in enumerate(side.evaluation) if f[PROMPT_LENGTH] > 0 and not has_answer(f)]
    if not train and not evaluation:
        return data, None

    work = [_Work((TRAIN, i, k), prompt_of(side.train[i]), False)
            for i in train for k in range(samples)]
    work += [_Work((EVALUATION, i, 0), prompt_of(side.evaluation[i]), True) for i in evaluation]
    answers, stats = _generate(config, data, teacher, work, device=device, reporter=reporter)

    def rebuild(examples: list[Features], split: str, wanted: list[int],
                copies: int) -> tuple[list[Features], int]:
        chosen, out, teacher_written = set(wanted), [], 0
        for i, features in enumerate(examples):
            if i not in chosen:
                out.append(features)
                continue
            for k in range(copies):
                answer = answers[(split, i, k)]
                if answer:
                    out.append(answered(prompt_of(features), answer))
                    teacher_written += 1
                else:
                    stats.dropped += 1
        return out, teacher_written

    new_train, written = rebuild(side.train, TRAIN, train, samples)
    new_eval = (new_train[:TRAIN_EVAL_LIMIT] if reuse_train
                else rebuild(side.evaluation, EVALUATION, evaluation, 1)[0])
    if not new_train or not new_eval:
        raise ValueError("the teacher's answers left no example to learn from: every prompt "
                         "fills data.max_seq_length, leaving no room for an answer")
    new_side = replace(side, train=new_train, evaluation=new_eval)
    sources = {**data.sources, "file answers": len(new_train) - written,
               "teacher answers": written}
    return replace(data, teacher=new_side, student=new_side, sources=sources), stats


def _generate(
    config: JobConfig, data: TaskData, teacher: nn.Module, work: list[_Work], *,
    device: torch.device, reporter: Reporter,
) -> tuple[dict[Key, list[int]], AnswerStats]:
    """Every answer of `work`: those stored by an earlier attempt, and the rest written now,
    stored batch by batch."""
    spec, hp = config.generation, config.hyperparameters
    tokenizer = data.student.tokenizer
    eos_id, pad_id = tokenizer.eos_token_id, pad_token_id(tokenizer)
    decoding = Decoding(spec.max_new_tokens, spec.temperature, spec.top_p)
    header = json.loads(json.dumps({
        "version": STORE_VERSION, "teacher": teacher_identity(teacher),
        "train": _fingerprint([prompt_of(f) for f in data.student.train]),
        "evaluation": _fingerprint([prompt_of(f) for f in data.student.evaluation]),
        "decoding": {"max_new_tokens": spec.max_new_tokens, "temperature": spec.temperature,
                     "top_p": spec.top_p},
        "max_length": data.max_length, "seed": hp.seed, "eos": eos_id,
    }))
    store = AnswerStore(teacher_answers_path(config.work_dir), header)
    stored = store.load()
    wanted = {item.key for item in work}
    answers = {key: ids for key, ids in stored.items() if key in wanted}
    todo = sorted((item for item in work if item.key not in answers),
                  key=lambda item: (item.greedy_only, len(item.prompt), item.key))
    size = max(1, hp.eval_batch_size)
    batches: list[list[_Work]] = []
    for item in todo:  # a batch holds one kind of decoding
        if batches and len(batches[-1]) < size and batches[-1][0].greedy_only == item.greedy_only:
            batches[-1].append(item)
        else:
            batches.append([item])
    stats = AnswerStats(prompts=len({key[:2] for key in wanted}), answers=len(work),
                        reused=len(answers))
    if answers:
        reporter.message(f"Reusing {len(answers):,} answers the teacher wrote in an earlier "
                         f"attempt of this job; {len(todo):,} to write.",
                         data={"stage": "generate", "reused_answers": len(answers)})
    tracker = Tracker(reporter, "generate", len(batches))
    for n, batch in enumerate(batches, start=1):
        check_stop(reporter)
        seed = zlib.crc32(f"{hp.seed}:{batch[0].key}".encode())
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = generate_answers(
                teacher, [item.prompt for item in batch],
                Decoding(decoding.max_new_tokens) if batch[0].greedy_only else decoding,
                eos_id=eos_id, pad_id=pad_id, device=device,
                budgets=[data.max_length - len(item.prompt) for item in batch])
        store.append((item.key, answer) for item, answer in zip(batch, out.answers, strict=True))
        for item, answer in zip(batch, out.answers, strict=True):
            answers[item.key] = answer
        stats.written += len(batch)
        stats.tokens += out.tokens
        stats.seconds += out.seconds
        tracker.report(n, 0)
    tracker.done(0)
    stats.unfinished = sum(1 for ids in answers.values()
                           if ids and eos_id is not None and ids[-1] != eos_id)
    _report(stats, spec.max_new_tokens, reporter)
    return answers, stats


def _report(stats: AnswerStats, max_new_tokens: int, reporter: Reporter) -> None:
    speed = (f" in {stats.seconds:.1f} s ({stats.tokens_per_s:,} tokens/s)"
             if stats.written else "")
    reporter.message(
        f"The teacher wrote {stats.written:,} answers ({stats.tokens:,} tokens){speed}"
        + (f", and reused {stats.reused:,} from an earlier attempt" if stats.reused else "")
        + f": {stats.answers:,} answers to {stats.prompts:,} prompts.",
        data={"stage": "generate", **stats.summary()})
    reporter.metrics(0, {"teacher_answers": stats.answers, "teacher_answer_tokens": stats.tokens,
                         "teacher_tokens_per_s": stats.tokens_per_s})
    if stats.unfinished:
        reporter.message(
            f"{stats.unfinished:,} of the teacher's {stats.answers:,} answers reached "
            f"generation.max_new_tokens ({max_new_tokens}), or the room data.max_seq_length "
            "leaves after the prompt, before their end-of-sequence token: the student learns "
            "them unfinished; raise generation.max_new_tokens if the answers need more room.",
            level="warning",
            data={"stage": "generate", "unfinished_answers": stats.unfinished})
