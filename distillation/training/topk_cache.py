"""Top-k teacher distributions for LM vocabularies: what a teacher cache keeps per token position.

Full logits are too big to keep for language models (a million target tokens × a 32k vocabulary
× 4 bytes is 128 GB). Per position we keep the teacher's k most likely tokens (their ids and
log-probabilities at T = 1) and the tail mass, the probability of every other token:
k·(2 + 4) + 4 bytes, 196 bytes at k = 32.

The KL target is **top-k plus a "rest" bucket**: the teacher's distribution becomes k + 1
outcomes (its top-k tokens, and "any other token" with the tail mass), and the student's is
collapsed the same way (its probabilities of those k tokens, and the sum of all the others).
The KL over these k + 1 outcomes uses exactly what was kept: it asks the student to put the
tail mass on the tail without inventing a shape for the teacher's tail (spreading the mass
uniformly over the other V − k tokens would pull the student's tail towards uniform, a shape
the teacher never had). With k = V it is the full KL.

Temperature: softening at T ≠ 1 rescales the tail by its shape, which is not kept. We model the
tail as V − k tokens sharing its mass equally, so the rest bucket's weight at T is
(V − k) · (tail / (V − k))^(1/T) against exp(ℓ_i / T) for the top-k log-probabilities ℓ_i.
At T = 1 this is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_K = 32
_FLOOR = -1e4  # log-probability standing in for "no mass" (finite, so gradients stay finite)


@dataclass
class TopKRows:
    """The teacher's top-k tokens at some positions, one row per position."""

    log_probs: Tensor  # (R, k) log-probabilities at T = 1, most likely first
    indices: Tensor  # (R, k) token ids
    tail_mass: Tensor  # (R,) 1 − Σ top-k probabilities at T = 1

    def to(self, device: torch.device) -> TopKRows:
        return TopKRows(self.log_probs.to(device), self.indices.to(device),
                        self.tail_mass.to(device))


def compress(logits: Tensor, k: int = DEFAULT_K) -> TopKRows:
    """The top-k rows of teacher logits `(R, V)` (k is capped at V)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    values, indices = log_p.topk(min(k, logits.shape[-1]), dim=-1)
    # A logsumexp over the other tokens, not 1 − Σ top-k: a tiny tail keeps its precision.
    tail = torch.logsumexp(log_p.scatter(-1, indices, -math.inf), dim=-1).exp()
    return TopKRows(values, indices, tail)


def sparse_target(rows: TopKRows, temperature: float, vocab_size: int) -> tuple[Tensor, Tensor]:
    """The teacher's k + 1 outcome distribution at `temperature`, as log-probabilities:
    ((R, k) for the top-k tokens, (R,) for the rest bucket). See the module notes."""
    n_tail = vocab_size - rows.indices.shape[-1]
    top = rows.log_probs.float() / temperature
    if n_tail > 0:
        log_tail = rows.tail_mass.float().clamp_min(1e-30).log()
        rest = math.log(n_tail) + (log_tail - math.log(n_tail)) / temperature
        rest = torch.where(rows.tail_mass > 0, rest, torch.full_like(rest, _FLOOR))
    else:
        rest = torch.full_like(top[:, 0], _FLOOR)
    norm = torch.logsumexp(torch.cat([top, rest[:, None]], dim=-1), dim=-1, keepdim=True)
    return top - norm, rest - norm[:, 0]


def topk_kl(student_logits: Tensor, rows: TopKRows, temperature: float) -> Tensor:
    """T² · KL(p̂_teacher ‖ q̂_student) over the k + 1 outcomes, averaged over positions.

    `student_logits` are `(R, V)`, one row per position of `rows`. q̂ gathers the student's
    softened probabilities of the teacher's top-k tokens and sums the rest (a logsumexp over the
    other tokens, so a tiny rest keeps its precision).
    """
    if student_logits.shape[0] != rows.indices.shape[0]:
        # gather would quietly pair the first rows only: a cache out of step with its batches
        raise ValueError(f"{student_logits.shape[0]} student rows but {rows.indices.shape[0]} "
                         "cached teacher rows")
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    indices = rows.indices.long()
    q_top = log_q.gather(-1, indices)
    others = log_q.scatter(-1, indices, _FLOOR)
    q_rest = torch.logsumexp(others, dim=-1)
    p_top, p_rest = sparse_target(rows, t, student_logits.shape[-1])
    kl = (p_top.exp() * (p_top - q_top)).sum(dim=-1) + p_rest.exp() * (p_rest - q_rest)
    return kl.mean() * t * t


@dataclass
class TopKCache:
    """Top-k rows of every example's target positions, stored flat: example i owns rows
    `offsets[i]:offsets[i + 1]`, in position order. Log-probabilities are kept in float16
    (most likely tokens are near 0, where float16 is finest), token ids in int32."""

    k: int
    vocab_size: int
    log_probs: Tensor  # (R, k) float16
    indices: Tensor  # (R, k) int32
    tail_mass: Tensor  # (R,) float32
    offsets: Tensor  # (N + 1,) int64

    @classmethod
    def from_examples(cls, examples: Sequence[TopKRows], *, vocab_size: int) -> TopKCache:
        """A cache from each example's rows, in dataset order (example i is `examples[i]`)."""
        if not examples:
            raise ValueError("no examples to cache")
        counts = torch.tensor([0] + [len(e.tail_mass) for e in examples], dtype=torch.int64)
        return cls(
            k=examples[0].indices.shape[-1], vocab_size=vocab_size,
            log_probs=torch.cat([e.log_probs.detach().cpu() for e in examples]).half(),
            indices=torch.cat([e.indices.detach().cpu() for e in examples]).int(),
            tail_mass=torch.cat([e.tail_mass.detach().cpu() for e in examples]).float(),
            offsets=counts.cumsum(0),
        )

    def lookup(self, example_indices: Tensor | Sequence[int]) -> TopKRows:
        """The rows of these examples, concatenated in the order given (a batch's order)."""
        ids = torch.as_tensor(example_indices, dtype=torch.int64).cpu().tolist()
        rows = torch.cat([torch.arange(int(self.offsets[i]), int(self.offsets[i + 1]))
                          for i in ids])
        return TopKRows(self.log_probs[rows].float(), self.indices[rows].long(),
                        self.tail_mass[rows])

    def tensors(self) -> dict[str, Tensor]:
        """What `teacher_cache.save_tensors` writes; `from_tensors` reads it back."""
        return {"log_probs": self.log_probs, "indices": self.indices, "tail_mass": self.tail_mass,
                "offsets": self.offsets,
                "shape": torch.tensor([self.k, self.vocab_size], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> TopKCache:
        k, vocab_size = (int(x) for x in tensors["shape"])
        return cls(k=k, vocab_size=vocab_size, log_probs=tensors["log_probs"],
                   indices=tensors["indices"], tail_mass=tensors["tail_mass"],
                   offsets=tensors["offsets"])
