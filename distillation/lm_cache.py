"""The teacher cache of the token-level tasks (causal LM, seq2seq): top-k rows per target token.

As for classification (`cache`), the frozen teacher gives the same outputs on an example every
epoch, so the `cache_teacher` stage runs it once over the training set and the loop looks its
outputs up by example index (`cache.EXAMPLE_INDEX`, which the batches carry). A vocabulary is
too wide to keep whole logits per token, so each target position (label ≠ −100, after the
causal shift) keeps the teacher's top-k tokens and the tail mass (`topk_cache`; k is
`hyperparameters.teacher_cache_top_k`, 32 by default), and the `kl` term becomes the KL over
those k tokens plus a "rest" bucket (`topk_cache.topk_kl`; the full KL when k covers the
vocabulary). `ce` reads the labels and is unaffected.

Which jobs cache: those classification would (no loss on hidden states or attention maps, more
than one pass over the data) and with no loss that needs the teacher's full distribution.
`reverse_kl`, `jsd` and `mse_logits` do: a k + 1-bucket reverse KL or JSD is well defined, but
it is not the loss asked for (both weigh the student's own tail against the teacher's, whose
shape the cache does not keep), and `mse_logits` regresses on raw logits the cache does not keep
at all. Rather than quietly optimise another objective, such a job runs the teacher every step,
and an event says why.

The cache is the classification cache's file (`cache.CACHE_FILE` in the work directory, which
checkpoints reference) with a header of kind "topk": the task, k, a fingerprint of the inputs
and labels, and the teacher's identity. A resumed job reuses it; another teacher, dataset or k
does not.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from distillation.cache import (
    CACHE_VERSION,
    cache_path,
    dataset_fingerprint,
    load_tensors,
    save_tensors,
    skip_reason,
    teacher_identity,
)
from distillation.config import Hyperparameters, Reporter
from distillation.lm_data import Features
from distillation.tasks import CAUSAL_LM, IGNORE_INDEX, model_batch, target_rows
from distillation.topk_cache import TopKCache, TopKRows, compress
from distillation.training import Tracker, autocast, check_stop, to_device

# Loss terms that compare the student with the teacher's whole distribution over the vocabulary.
FULL_DISTRIBUTION_LOSSES = ("reverse_kl", "jsd", "mse_logits")


def token_skip_reason(
    loss_types: Collection[str], hp: Hyperparameters, *, needs_hidden_states: bool,
    needs_attentions: bool, num_examples: int,
) -> str | None:
    """Why a token-level job should not cache the teacher's outputs; None when it should."""
    reason = skip_reason(hp, needs_hidden_states=needs_hidden_states,
                         needs_attentions=needs_attentions, num_examples=num_examples)
    if reason is not None:
        return reason
    full = [name for name in FULL_DISTRIBUTION_LOSSES if name in loss_types]
    if full:
        return (f"{' and '.join(full)} {'needs' if len(full) == 1 else 'need'} the teacher's "
                "full distribution over the vocabulary, and the cache keeps only its top-k "
                "tokens per position; the teacher runs every step instead")
    return None


def compute_teacher_topk(
    teacher: nn.Module,
    features: Sequence[Features],
    collator: Callable[[list[Features]], dict[str, Tensor]],
    *,
    task: str,
    k: int,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
) -> TopKCache:
    """One teacher pass over `features` (shortest first), kept as the top-k rows of each
    example's target positions, in dataset order."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    tracker = Tracker(reporter, "cache_teacher", len(chunks))
    shift = task == CAUSAL_LM
    examples: list[TopKRows | None] = [None] * len(features)
    vocab_size = 0
    with torch.no_grad():
        for n, chunk in enumerate(chunks, start=1):
            check_stop(reporter)
            batch = to_device(collator([features[i] for i in chunk]), device)
            with autocast(device):
                logits = teacher(**model_batch(batch, task), use_cache=False).logits
            vocab_size = logits.shape[-1]
            rows = compress(target_rows(logits, batch["labels"], shift=shift)[0], k)
            # target_rows flattens row-major: each example's positions, in batch order.
            labels = batch["labels"][:, 1:] if shift else batch["labels"]
            counts = (labels != IGNORE_INDEX).sum(dim=1).tolist()
            parts = zip(rows.log_probs.split(counts), rows.indices.split(counts),
                        rows.tail_mass.split(counts), strict=True)
            for i, (log_probs, indices, tail) in zip(chunk, parts, strict=True):
                examples[i] = TopKRows(log_probs.cpu(), indices.cpu(), tail.cpu())
            tracker.report(n, 0)
    tracker.done(0)
    done = [rows for rows in examples if rows is not None]
    assert len(done) == len(features)
    return TopKCache.from_examples(done, vocab_size=vocab_size)


def teacher_topk_cache(
    teacher: nn.Module,
    features: Sequence[Features],
    collator: Callable[[list[Features]], dict[str, Tensor]],
    *,
    task: str,
    k: int,
    work_dir: Path,
    batch_size: int,
    device: torch.device,
    reporter: Reporter,
) -> TopKCache:
    """The teacher's top-k rows on `features`: read from the work directory when an earlier
    run of this job cached them for the same data, teacher and k, else computed and saved."""
    path = cache_path(work_dir)
    header = {"version": CACHE_VERSION, "kind": "topk", "task": task, "k": k,
              "examples": len(features),
              "fingerprint": dataset_fingerprint(features, keys=("input_ids", "labels")),
              "teacher": teacher_identity(teacher)}
    saved = load_tensors(path, header)
    if saved is not None and {"offsets", "shape"} <= saved.keys() \
            and saved["offsets"].shape[0] == len(features) + 1:
        reporter.message(f"Reusing the teacher's cached top-{k} tokens on {len(features)} "
                         "examples.")
        return TopKCache.from_tensors(saved)
    cache = compute_teacher_topk(teacher, features, collator, task=task, k=k,
                                 batch_size=batch_size, device=device, reporter=reporter)
    save_tensors(path, header, cache.tensors())
    reporter.message(f"Cached the teacher's top-{cache.k} tokens and tail mass at "
                     f"{len(cache.tail_mass)} target positions of {len(features)} examples; "
                     "every epoch reuses them instead of running the teacher.")
    return cache
