"""Quality of the token-level tasks: perplexity on target tokens, ROUGE-L and BLEU of greedy
generations.

Perplexity = exp(mean negative log-likelihood over every target token of the evaluation split)
(completion tokens only for prompt + completion records; decoder targets for seq2seq). ROUGE-L
(rouge-score, F-measure of the longest common subsequence, no stemming) and BLEU (sacrebleu,
corpus level) compare greedy generations with the reference targets on the first
`GENERATE_LIMIT` evaluation records, both on a 0–100 scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import sacrebleu
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distillation.predict import Predictor
from distillation.tasks import CAUSAL_LM, SEQ2SEQ, model_batch, target_rows
from distillation.training import autocast, to_device

GENERATE_LIMIT = 64  # evaluation records generated for ROUGE-L / BLEU
GENERATE_MAX_NEW_TOKENS = 64
GENERATE_BATCH = 16
Collator = Callable[[list[dict[str, Any]]], dict[str, Tensor]]


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    collator: Collator,
    *,
    task: str,
    device: torch.device,
    batch_size: int,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, float]:
    """{"perplexity", "loss" (mean NLL per target token), "tokens"} on encoded `features`."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(features), batch_size):
        if on_batch is not None:
            on_batch()
        batch = to_device(collator(list(features[start : start + batch_size])), device)
        with autocast(device):
            logits = model(**model_batch(batch, task), use_cache=False).logits
        rows, labels = target_rows(logits, batch["labels"], shift=task == CAUSAL_LM)
        total += float(F.cross_entropy(rows.float(), labels, reduction="sum"))
        count += labels.numel()
    loss = total / max(1, count)
    return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "tokens": float(count)}


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"rougeL", "bleu"} of predictions against one reference each, 0–100."""
    if not predictions:
        return {"rougeL": 0.0, "bleu": 0.0}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure
             for pred, ref in zip(predictions, references, strict=True)]
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    return {"rougeL": 100.0 * sum(rouge) / len(rouge), "bleu": float(bleu)}


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: Sequence[str],
    *,
    task: str,
    device: torch.device,
    max_length: int,
    max_new_tokens: int,
    on_batch: Callable[[], None] | None = None,
) -> list[str]:
    """Greedy generations, through the same `Predictor.generate` that serves predictions."""
    predictor = Predictor(model=model, tokenizer=tokenizer, task=task, device=str(device))
    predictor.max_length = min(predictor.max_length, max_length)
    texts: list[str] = []
    for start in range(0, len(sources), GENERATE_BATCH):
        if on_batch is not None:
            on_batch()
        chunk = list(sources[start : start + GENERATE_BATCH])
        texts += [out["text"] for out in predictor.generate(chunk, max_new_tokens)]
    return texts


def generation_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    device: torch.device,
    max_length: int,
    max_new_tokens: int = GENERATE_MAX_NEW_TOKENS,
    limit: int = GENERATE_LIMIT,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, float]:
    """ROUGE-L and BLEU of a seq2seq model's greedy outputs on (source, reference) pairs."""
    pairs = list(pairs[:limit])
    predictions = generate_texts(model, tokenizer, [s for s, _ in pairs], task=SEQ2SEQ,
                                 device=device, max_length=max_length,
                                 max_new_tokens=max_new_tokens, on_batch=on_batch)
    return text_metrics(predictions, [r for _, r in pairs])


def evaluate_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    features: Sequence[dict[str, Any]],
    collator: Collator,
    pairs: Sequence[tuple[str, str]],
    *,
    task: str,
    device: torch.device,
    batch_size: int,
    max_length: int,
    generate: bool = True,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, float]:
    """The task's metrics: {"perplexity"}, plus {"rougeL", "bleu"} for seq2seq when `generate`.

    Generations are at most as long as the longest reference target (in tokens), and never
    longer than `GENERATE_MAX_NEW_TOKENS`.
    """
    metrics = {"perplexity": perplexity(model, features, collator, task=task, device=device,
                                        batch_size=batch_size, on_batch=on_batch)["perplexity"]}
    if task == SEQ2SEQ and generate and pairs:
        longest = max(len(f["labels"]) for f in features[:GENERATE_LIMIT])
        metrics.update(generation_metrics(
            model, tokenizer, pairs, device=device, max_length=max_length,
            max_new_tokens=min(GENERATE_MAX_NEW_TOKENS, longest + 1), on_batch=on_batch,
        ))
    return metrics
