"""Attention heads of a student built from its teacher: how many key-value heads a student with
fewer heads gets (`kv_heads`), and which of the teacher's heads it keeps (`head_map`).

Attention with separate query/key/value/output projections of whole heads (Llama and its kin,
BART, OPT, T5) keeps the heads whole: a student with fewer heads of the teacher's head width
takes a subset of the teacher's heads, so each kept head computes what it computed in the
teacher, up to the projection of the residual stream (`build.init_from_teacher`). With
grouped-query attention (`num_key_value_heads`) the student keeps as many of the teacher's
key-value heads as its head count allows, and each of its query heads is one of the teacher's
query heads that read that key-value head: a query head never meets keys it was not trained with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distillation.losses.layer_map import even_spread

# Weights of whole attention heads: (name, the axis of the heads, which heads, rows per head or
# None for the head width). Llama, Mistral, Qwen2, BART, OPT (`self_attn.q_proj` … `o_proj` or
# `out_proj`), T5 (`SelfAttention.q` … `.o`, and its relative position bias: one column a head).
_ATTENTION = r"\.(self_attn|encoder_attn|SelfAttention|EncDecAttention)\."
_HEAD_AXES = (
    (re.compile(_ATTENTION + r"(q_proj|q)\.(weight|bias)$"), 0, "q", None),
    (re.compile(_ATTENTION + r"(k_proj|v_proj|k|v)\.(weight|bias)$"), 0, "kv", None),
    (re.compile(_ATTENTION + r"(o_proj|out_proj|o)\.weight$"), 1, "q", None),
    (re.compile(_ATTENTION + r"relative_attention_bias\.weight$"), 1, "q", 1),
)


def kv_heads(num_heads: int, teacher_kv_heads: int) -> int:
    """The key-value heads of a student with `num_heads` query heads: the most it can have, up
    to the teacher's count, that divide its query heads evenly (grouped-query attention needs
    whole groups). 9 heads / 3 key-value heads narrowed to 6 heads → 3, to 4 → 2, to 7 → 1."""
    return max(k for k in range(1, min(num_heads, teacher_kv_heads) + 1) if num_heads % k == 0)


@dataclass(frozen=True)
class HeadMap:
    """Which of the teacher's attention heads a student with fewer heads of the same width
    keeps: `q[i]` is the teacher's query head that student query head i copies, `kv[j]` the
    key-value head that student key-value head j copies."""

    q: list[int]
    kv: list[int]
    head_dim: int
    teacher_heads: int
    teacher_kv_heads: int

    def select(self, name: str, tensor: Tensor) -> Tensor:
        """`tensor` (a teacher weight called `name`) with only the kept heads' rows or columns;
        unchanged when it is no weight of whole heads."""
        for pattern, axis, kind, width in _HEAD_AXES:
            if not pattern.search(name) or tensor.ndim <= axis:
                continue
            heads, count = (self.q, self.teacher_heads) if kind == "q" else (
                self.kv, self.teacher_kv_heads)
            unit = width or self.head_dim
            if tensor.shape[axis] != count * unit:
                return tensor  # not laid out as the config says: left to `transfer`
            rows = (torch.tensor(heads)[:, None] * unit + torch.arange(unit)).flatten()
            return tensor.index_select(axis, rows.to(tensor.device))
        return tensor


def _heads(config: Any) -> tuple[int, int, int]:
    """(query heads, key-value heads, head width) of a config."""
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv = getattr(config, "num_key_value_heads", None)
    width = getattr(config, "head_dim", None) or getattr(config, "d_kv", None)
    if not isinstance(width, int):
        width = int(config.hidden_size) // heads if heads else 0
    return heads, kv if isinstance(kv, int) and kv > 0 else heads, width


def head_map(student: Any, teacher: Any) -> HeadMap | None:
    """The teacher's heads a student (config) keeps, when it has fewer of the teacher's width;
    None when it has as many (nothing to choose) or heads of another width (no head can be
    copied whole). Key-value heads are spread evenly over the teacher's; each keeps query heads
    of its own group first."""
    s_heads, s_kv, s_width = _heads(student)
    t_heads, t_kv, t_width = _heads(teacher)
    if (s_width != t_width or not 0 < s_heads <= t_heads or not 0 < s_kv <= t_kv
            or t_heads % t_kv or s_heads % s_kv or (s_heads, s_kv) == (t_heads, t_kv)):
        return None
    kv = even_spread(s_kv, t_kv)
    t_group, s_group = t_heads // t_kv, s_heads // s_kv
    q: list[int] = []
    for k in kv:
        own = [k * t_group + m for m in range(t_group)]
        pool = own + [h for h in range(t_heads) if h not in own]
        q.extend([h for h in pool if h not in q][:s_group])
    return HeadMap(q=q, kv=kv, head_dim=t_width, teacher_heads=t_heads, teacher_kv_heads=t_kv)
