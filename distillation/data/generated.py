"""Teacher-written prompts, the parts without a model: the examples they imitate, the request
that asks the teacher for one, and the cleaning that decides which are kept.

Examples are the records of `DataGenerationSpec.examples_file`: chat `messages` (the prompt is the
last user turn before the answer; a system turn that every example shares is kept for the new
prompts too) or `prompt` (+ `completion`) records. Each request gives the teacher the task
description and `SHOTS` examples drawn at random (seeded by the request's number, so an attempt
that resumes asks what the first one would have asked), as its own answers to earlier asks, and
asks for ONE new prompt (`request_messages`).

Cleaning (`PromptFilter`, one verdict per reply, in the order written; deterministic):

- `empty`: no letter or digit left once the reply is tidied (`tidy_reply`);
- `degenerate`: a repetition loop: at least 8 words with under 30% of them distinct, or at least
  20 character 3-grams with under 20% distinct;
- `too_long`: more teacher tokens than the budget (the prompt as the student reads it, chat
  template applied), or cut off by the generation limit;
- `copies_example`: the same as an example once normalised, or a near duplicate of one;
- `duplicate`: the same as a prompt already kept, once normalised (`normalise`: Unicode NFKC,
  case folded, every run of characters that are not letters or digits one space);
- `near_duplicate`: a character 3-gram Jaccard similarity of at least `NEAR_DUPLICATE_JACCARD`
  (0.7) with a prompt already kept. Two 10-word prompts that differ in one word score about
  0.8; in two words about 0.65. Self-Instruct drops a new instruction at ROUGE-L 0.7 with any
  kept one: this is the same idea on characters, and cheaper; dividing by the union rather than
  the mean length, it calls fewer pairs near at the same threshold.
"""

from __future__ import annotations

import json
import os
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillation.config import DataSpec
from distillation.data.records import Record

MIN_EXAMPLES = 5  # distinct example prompts a job needs
SHOTS = 3  # examples shown per request
NEAR_DUPLICATE_JACCARD = 0.7
NGRAM = 3
EMPTY, DEGENERATE, TOO_LONG = "empty", "degenerate", "too_long"
COPIES_EXAMPLE, DUPLICATE, NEAR_DUPLICATE = "copies_example", "duplicate", "near_duplicate"
REASONS = (EMPTY, DEGENERATE, TOO_LONG, COPIES_EXAMPLE, DUPLICATE, NEAR_DUPLICATE)

SYSTEM = "You write training data for a language model, one example at a time."
ASK = "Write one new request for the task."
ASK_AGAIN = "Write another one, different from the ones before."
_LABEL = re.compile(r"^\s*(?:new\s+)?(?:example|request|prompt|input|question)(?:\s*\d+)?\s*[:.)-]\s*",
                    re.IGNORECASE)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
_NOT_WORD = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class Examples:
    """The example prompts (distinct, in file order) and the system turn they all share."""

    prompts: list[str]
    system: str | None = None


def _chat_prompt(messages: Any, number: int, name: str) -> tuple[str, str | None]:
    """(last user turn before the answer, the system turn or None) of a `messages` record."""
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise ValueError(f"{name}: record {number}: `messages` must be a list of "
                         '{"role": …, "content": "…"} turns')
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if not users or not users[-1].strip():
        raise ValueError(f"{name}: record {number} has no user turn to imitate")
    system = next((m["content"] for m in messages if m.get("role") == "system"), None)
    return users[-1].strip(), system


def read_examples(records: Sequence[Record], spec: DataSpec, *, name: str = "examples_file") -> Examples:
    """The prompts the teacher imitates; ValueError naming the record that has none, or when
    fewer than `MIN_EXAMPLES` distinct ones are left."""
    prompts: dict[str, None] = {}
    systems: list[str | None] = []
    for number, record in enumerate(records, start=1):
        if "messages" in record:
            prompt, system = _chat_prompt(record["messages"], number, name)
        elif isinstance(record.get(spec.prompt_column), str) and record[spec.prompt_column].strip():
            prompt, system = record[spec.prompt_column].strip(), None
        else:
            raise ValueError(f"{name}: record {number} has neither `messages` nor a non-empty "
                             f"{spec.prompt_column!r}: examples are chat records or prompts")
        prompts.setdefault(prompt, None)
        systems.append(system)
    if len(prompts) < MIN_EXAMPLES:
        raise ValueError(f"{name} holds {len(prompts)} distinct example prompt(s); data "
                         f"generation needs at least {MIN_EXAMPLES}")
    shared = systems[0] if systems and all(s == systems[0] for s in systems) else None
    return Examples(prompts=list(prompts), system=shared)


def draw_shots(examples: Sequence[str], *, seed: int, index: int, k: int = SHOTS) -> list[str]:
    """The examples shown in request `index`: `k` drawn without replacement, the same for the
    same seed and index whatever ran before."""
    return random.Random(f"{seed}:{index}").sample(list(examples), min(k, len(examples)))


def request_messages(task_description: str, shots: Sequence[str]) -> list[dict[str, str]]:
    """The chat that asks the teacher for ONE new prompt like `shots` for the task: the shots are
    its own earlier answers to the same ask, so even a small model continues the pattern.

    Measured on SmolLM2-135M-Instruct, 16 prompts asked for in the style of 8 SST-2 questions:
    with the examples listed in one message it talked about the ask instead (7 kept of 48
    replies, 41 too long); as earlier answers, 16 kept of 17 replies at temperature 1 and of 23
    at 0.7.
    """
    turns = [{"role": "system", "content": (
        f"{SYSTEM} The task: {task_description.strip()} Each time you are asked, write one new "
        "request a user could send for this task, in the style of the earlier ones but about "
        "something else. Write the request only.")}]
    for n, shot in enumerate(shots):
        turns += [{"role": "user", "content": ASK if n == 0 else ASK_AGAIN},
                  {"role": "assistant", "content": shot}]
    return [*turns, {"role": "user", "content": ASK_AGAIN if shots else ASK}]


def tidy_reply(text: str) -> str:
    """The prompt in a teacher's reply: control characters (but newlines and tabs) removed,
    trimmed, a leading "Example 4:"-like label and quotes around the whole of it removed."""
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
    text = _LABEL.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def normalise(text: str) -> str:
    """NFKC, case folded, runs of non-alphanumerics as one space: what `duplicate` compares."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(normalised: str, n: int = NGRAM) -> frozenset[str]:
    """The character n-grams of a normalised text (the text itself when shorter)."""
    if len(normalised) <= n:
        return frozenset([normalised])
    return frozenset(normalised[i:i + n] for i in range(len(normalised) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def is_degenerate(normalised: str) -> bool:
    """A repetition loop: many words few distinct, or many 3-grams few distinct."""
    words = normalised.split()
    if len(words) >= 8 and len(set(words)) < 0.3 * len(words):
        return True
    grams = [normalised[i:i + NGRAM] for i in range(len(normalised) - NGRAM + 1)]
    return len(grams) >= 20 and len(set(grams)) < 0.2 * len(grams)


class _Near:
    """Texts' shingle sets, asked whether a new one is within the threshold of any."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.sets: list[frozenset[str]] = []

    def close(self, grams: frozenset[str]) -> bool:
        for other in self.sets:
            small, large = sorted((len(grams), len(other)))
            # Jaccard ≤ |smaller| / |larger|: most pairs are ruled out by their sizes alone.
            if small >= self.threshold * large and jaccard(grams, other) >= self.threshold:
                return True
        return False


class PromptFilter:
    """Verdicts on written prompts, one at a time, against the examples and the prompts kept
    so far (see the module notes for the reasons and their order)."""

    def __init__(self, examples: Iterable[str], *, max_tokens: int,
                 threshold: float = NEAR_DUPLICATE_JACCARD) -> None:
        self.max_tokens = max_tokens
        self.kept: list[str] = []
        self.dropped: Counter[str] = Counter()
        self._examples = _Near(threshold)
        self._example_texts: set[str] = set()
        for example in examples:
            norm = normalise(example)
            self._example_texts.add(norm)
            self._examples.sets.append(shingles(norm))
        self._kept = _Near(threshold)
        self._kept_texts: set[str] = set()

    def verdict(self, prompt: str, tokens: int) -> str | None:
        """Why `prompt` (`tokens` long, in the teacher's tokens) is dropped, or None when it is
        kept (then it joins `kept`)."""
        reason = self._reason(prompt, tokens)
        if reason is None:
            norm = normalise(prompt)
            self.kept.append(prompt)
            self._kept_texts.add(norm)
            self._kept.sets.append(shingles(norm))
        else:
            self.dropped[reason] += 1
        return reason

    def _reason(self, prompt: str, tokens: int) -> str | None:
        norm = normalise(prompt)
        if not norm:
            return EMPTY
        if is_degenerate(norm):
            return DEGENERATE
        if tokens > self.max_tokens:
            return TOO_LONG
        grams = shingles(norm)
        if norm in self._example_texts or self._examples.close(grams):
            return COPIES_EXAMPLE
        if norm in self._kept_texts:
            return DUPLICATE
        if self._kept.close(grams):
            return NEAR_DUPLICATE
        return None


@dataclass
class Filtered:
    """What `filter_prompts` kept, what it dropped (by reason) and each prompt's verdict."""

    kept: list[str]
    dropped: dict[str, int]
    verdicts: list[str | None] = field(default_factory=list)


def filter_prompts(prompts: Sequence[str], tokens: Sequence[int], examples: Sequence[str], *,
                   max_tokens: int, threshold: float = NEAR_DUPLICATE_JACCARD) -> Filtered:
    """Clean a list of written prompts (each `tokens[i]` teacher tokens long) in order."""
    cleaner = PromptFilter(examples, max_tokens=max_tokens, threshold=threshold)
    verdicts = [cleaner.verdict(p, n) for p, n in zip(prompts, tokens, strict=True)]
    return Filtered(kept=cleaner.kept, dropped=dict(cleaner.dropped), verdicts=verdicts)


def prompt_messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    """A kept prompt as the chat turns of a prompt-only record."""
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": prompt}]


def generated_records(prompts: Sequence[str], answers: Mapping[str, Sequence[str]],
                      system: str | None) -> list[Record]:
    """The generated set as `messages` records: one per answer the teacher wrote to a prompt,
    or the prompt alone when it has none."""
    records: list[Record] = []
    for prompt in prompts:
        turns = prompt_messages(prompt, system)
        replies = answers.get(prompt) or ()
        records += [{"messages": [*turns, {"role": "assistant", "content": answer}]}
                    for answer in replies]
        if not replies:
            records.append({"messages": turns})
    return records


def write_jsonl(path: Path, records: Iterable[Record]) -> None:
    """Records as JSON lines, through a temporary sibling and a rename (whole or not at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".tmp-{path.name}")
    with partial.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)
