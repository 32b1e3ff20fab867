"""The teacher cache of the token-level tasks (causal LM, seq2seq): top-k rows per target token.

As for classification, the frozen teacher gives the same outputs on an example every epoch, so
the `cache_teacher` stage runs it once over the training set (`teacher_cache`, the one loop) and
the loop looks its outputs up by example index. A vocabulary is too wide to keep whole logits
per token, so each target position (label ≠ −100, after the causal shift) keeps the teacher's
top-k tokens and the tail mass (`topk_cache`; k is `hyperparameters.teacher_cache_top_k`, 32 by
default), and the `kl` term becomes the KL over those k tokens plus a "rest" bucket
(`topk_cache.topk_kl`; the full KL when k covers the vocabulary). `ce` reads the labels and is
unaffected.

Which jobs cache: those classification would (no loss on hidden states or attention maps, more
than one pass over the data) and with no loss that needs the teacher's full distribution.
`reverse_kl`, `jsd` and `mse_logits` do: a k + 1-bucket reverse KL or JSD is well defined, but
it is not the loss asked for (both weigh the student's own tail against the teacher's, whose
shape the cache does not keep), and `mse_logits` regresses on raw logits the cache does not keep
at all. Rather than quietly optimise another objective, such a job runs the teacher every step,
and an event says why.

The cache file's header has kind "topk", the task and k, a fingerprint of the inputs and labels,
and the teacher's identity: a resumed job reuses it; another teacher, dataset or k does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from distillation.tasks.token_data import IGNORE_INDEX, TokenTaskView, target_rows
from distillation.training.loop import Features
from distillation.training.teacher_cache import dataset_fingerprint
from distillation.training.topk_cache import TopKCache, TopKRows, compress

# Loss terms that compare the student with the teacher's whole distribution over the vocabulary.
FULL_DISTRIBUTION_LOSSES = ("reverse_kl", "jsd", "mse_logits")


@dataclass
class TopKFormat:
    """The token-level teacher cache: the top-k rows of each example's target positions."""

    task: TokenTaskView
    k: int
    prefix: str = ""
    kind: str = "topk"
    header: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 0  # the teacher's, seen in its logits

    def __post_init__(self) -> None:
        self.header = {"task": self.task.name, "k": self.k}

    def fingerprint(self, features: Sequence[Features]) -> str:
        return dataset_fingerprint(features, keys=("input_ids", "labels"))

    def forward(self, teacher: nn.Module, batch: dict[str, Tensor], **flags: Any) -> Any:
        return teacher(**self.task.model_batch(batch), use_cache=False, **flags)

    def split(self, logits: Tensor, batch: dict[str, Tensor]) -> list[Any]:
        shift = self.task.shift
        rows = compress(target_rows(logits, batch["labels"], shift=shift)[0], self.k)
        # target_rows flattens row-major: each example's positions, in batch order.
        labels = batch["labels"][:, 1:] if shift else batch["labels"]
        counts = (labels != IGNORE_INDEX).sum(dim=1).tolist()
        parts = zip(rows.log_probs.split(counts), rows.indices.split(counts),
                    rows.tail_mass.split(counts), strict=True)
        self.vocab_size = logits.shape[-1]
        return [TopKRows(log_probs.cpu(), indices.cpu(), tail.cpu())
                for log_probs, indices, tail in parts]

    def build(self, examples: list[Any], device: torch.device) -> TopKCache:
        return TopKCache.from_examples(examples, vocab_size=self.vocab_size)

    def restore(self, tensors: dict[str, Tensor], examples: int,
                device: torch.device) -> TopKCache | None:
        if not {"offsets", "shape"} <= tensors.keys() or tensors["offsets"].shape[0] != examples + 1:
            return None
        return TopKCache.from_tensors(tensors)

    def reused_message(self, examples: int) -> str:
        return f"Reusing the teacher's cached top-{self.k} tokens on {examples} examples."

    def cached_message(self, cache: Any, examples: int) -> str:
        return (f"Cached the teacher's top-{cache.k} tokens and tail mass at "
                f"{len(cache.tail_mass)} target positions of {examples} examples; every epoch "
                "reuses them instead of running the teacher.")
