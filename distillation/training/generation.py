"""Batched generation from token ids: the answers the teacher writes (the `generate` stage) and
the ones the student samples (on-policy batches).

Prompts are left-padded (a causal model continues from its last position) and decoded together
with the KV cache (each new token attends to the cached keys and values instead of re-running
the prompt). Every decoding setting is set here, explicitly: whatever a model's own
`generation_config` says (a top-k, a repetition penalty, its own temperature) would otherwise
change what the job asked for. An answer is the new tokens up to and including the first
end-of-sequence token; one that reaches `max_new_tokens` first ends there, without it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig

from distillation.training.loop import autocast


@dataclass(frozen=True)
class Decoding:
    """How answers are decoded: greedy at temperature 0, else sampled (nucleus `top_p`)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def config(self, *, eos_id: int | None, pad_id: int, max_new_tokens: int) -> GenerationConfig:
        sampling = {} if self.greedy else {"temperature": self.temperature, "top_p": self.top_p}
        return GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not self.greedy, num_beams=1,
            top_k=None if self.greedy else 0, repetition_penalty=1.0, no_repeat_ngram_size=0,
            eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True, **sampling,
        )


@dataclass
class Generated:
    """What one call wrote: an answer per prompt, how many tokens, and how long it took."""

    answers: list[list[int]]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(len(answer) for answer in self.answers)


def cut_at_eos(tokens: Sequence[int], eos_id: int | None) -> list[int]:
    """The tokens up to and including the first end-of-sequence token (all when there is none)."""
    tokens = list(tokens)
    if eos_id is not None and eos_id in tokens:
        return tokens[: tokens.index(eos_id) + 1]
    return tokens


def pad_id_of(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token
    (decoder-only tokenizers often have no pad token), else 0."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of `prompts` padded on the left to the longest, so every
    prompt ends at the last position, where a causal model continues."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids, mask


@torch.no_grad()
def generate_answers(
    model: nn.Module, prompts: Sequence[Sequence[int]], decoding: Decoding, *,
    eos_id: int | None, pad_id: int, device: torch.device,
    budgets: Sequence[int] | None = None,
) -> Generated:
    """An answer to each prompt (token ids, no padding), decoded as `decoding` says, in eval
    mode (the model's training mode is restored after). `budgets`: the most new tokens each
    prompt may get (what its example has room for), on top of `decoding.max_new_tokens`."""
    if not prompts:
        return Generated([], 0.0)
    started = time.perf_counter()
    ids, mask = left_padded(prompts, pad_id)
    width = ids.shape[1]
    limits = [decoding.max_new_tokens if budgets is None else min(decoding.max_new_tokens, b)
              for b in (budgets or [decoding.max_new_tokens] * len(prompts))]
    longest = max(1, max(limits))
    was_training = model.training
    model.eval()
    try:
        with autocast(device):
            out = model.generate(  # type: ignore[operator]
                input_ids=ids.to(device), attention_mask=mask.to(device),
                generation_config=decoding.config(eos_id=eos_id, pad_id=pad_id,
                                                  max_new_tokens=longest))
    finally:
        model.train(was_training)
    new = out[:, width:].tolist()
    answers = [cut_at_eos(row, eos_id)[: max(0, limit)]
               for row, limit in zip(new, limits, strict=True)]
    return Generated(answers, time.perf_counter() - started)
