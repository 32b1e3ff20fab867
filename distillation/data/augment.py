"""Extra distillation inputs made from the job's own texts, for the teacher to label.

A student learns the teacher's function from the inputs it sees the teacher answer; with a few
thousand labelled rows the student sees too few. Tang et al. (2019, "Distilling Task-Specific
Knowledge from BERT into Simple Neural Networks") grow the transfer set from the training texts
with three word-level rules, each sample drawing afresh:

- `mask`: each word becomes the tokenizer's mask token with probability `p_mask` (the teacher
  still has an opinion on "a [MASK] , funny film"; the student learns which words carry it);
- `replace`: each word becomes another word of the corpus, drawn by frequency, with probability
  `p_replace` (Tang et al. draw one of the same part of speech; frequency keeps it offline);
- `ngram`: a random window of 1–5 words of the text (SST-2's own phrases are such windows).

The teacher's soft outputs on these texts are what the student learns from (no label is
invented), so a rule that changes the sentiment does no harm: the teacher says so. Everything is
drawn from `random.Random(seed)`, so one job's augmented set is the same on every attempt.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from distillation.config import AUGMENT_METHODS as METHODS
from distillation.config import AugmentSpec

MAX_MULTIPLIER = 32
MAX_NGRAM = 5
DRAWS = 8  # tries per new text before giving up on a text no rule changes


def check_augmentation(methods: Sequence[str], multiplier: int) -> list[tuple[str, str]]:
    """Problems with an augmentation request, as (request field, message)."""
    problems: list[tuple[str, str]] = []
    if not methods:
        problems.append(("augmentation.methods",
                         f"augmentation.methods is empty; use one or more of {', '.join(METHODS)}"))
    for method in methods:
        if method not in METHODS:
            problems.append(("augmentation.methods",
                             f"augmentation.methods: unknown method {method!r}; use one or more "
                             f"of {', '.join(METHODS)}"))
    if not 1 <= multiplier <= MAX_MULTIPLIER:
        problems.append(("augmentation.multiplier",
                         f"augmentation.multiplier must be between 1 and {MAX_MULTIPLIER}, "
                         f"got {multiplier}"))
    return problems


class Augmenter:
    """Draws new texts from source texts by the spec's rules (whitespace-separated words)."""

    def __init__(self, spec: AugmentSpec, corpus: Sequence[str], *, mask_token: str | None,
                 seed: int) -> None:
        problems = check_augmentation(spec.methods, spec.multiplier)
        if problems:
            raise ValueError("; ".join(message for _, message in problems))
        if "mask" in spec.methods and not mask_token:
            raise ValueError("augmentation method 'mask' needs a tokenizer with a mask token; "
                             "use 'replace' or 'ngram' with this teacher")
        self.spec, self.mask_token = spec, mask_token or ""
        self.rng = random.Random(seed)
        counts = Counter(word for text in corpus for word in text.split())
        self.words = list(counts)
        self.weights = list(counts.values())

    def _mask(self, words: list[str]) -> list[str]:
        return [self.mask_token if self.rng.random() < self.spec.p_mask else w for w in words]

    def _replace(self, words: list[str]) -> list[str]:
        out = list(words)
        for i in range(len(out)):
            if self.words and self.rng.random() < self.spec.p_replace:
                out[i] = self.rng.choices(self.words, self.weights)[0]
        return out

    def _ngram(self, words: list[str]) -> list[str]:
        n = self.rng.randint(1, min(MAX_NGRAM, len(words)))
        start = self.rng.randint(0, len(words) - n)
        return words[start : start + n]

    def one(self, text: str) -> str | None:
        """A new text drawn from `text` by one rule (a few draws are tried: on a short text most
        leave it as it was), or None when none changed it (a one-word text, say)."""
        words = text.split()
        original = " ".join(words)
        for _ in range(DRAWS):
            method = self.rng.choice(self.spec.methods)
            new = " ".join({"mask": self._mask, "replace": self._replace,
                            "ngram": self._ngram}[method](words)) if words else ""
            if new and new != original:
                return new
        return None

    def texts(self, sources: Sequence[str]) -> list[tuple[int, str]]:
        """(source index, new text) pairs: up to `multiplier` new texts per source, in order."""
        out: list[tuple[int, str]] = []
        for index, text in enumerate(sources):
            for _ in range(self.spec.multiplier):
                new = self.one(text)
                if new is not None:
                    out.append((index, new))
        return out
