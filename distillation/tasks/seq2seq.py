"""Sequence-to-sequence: a source text → a target text (encoder-decoder models).

Records: `source` is the encoder's input, `target` the labels (tokenised as a target); the
decoder inputs are the labels shifted right after the decoder start token (`token_data`). Layer
losses compare the decoders. Quality: perplexity on the target tokens, plus ROUGE-L
(rouge-score, F-measure of the longest common subsequence, no stemming) and BLEU (sacrebleu,
corpus level) of greedy generations against the reference targets on the first
`GENERATE_LIMIT` evaluation records, both on a 0–100 scale; the report leads with ROUGE-L.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import (
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

from distillation.config import DataSpec
from distillation.data.records import Record
from distillation.models.info import SEQ2SEQ, max_input_length
from distillation.tasks.base import Side, TaskCard, TaskData
from distillation.tasks.token import TokenTask
from distillation.tasks.token_data import IGNORE_INDEX, TokenColumns
from distillation.training.loop import Features

GENERATE_LIMIT = 64  # evaluation records generated for ROUGE-L / BLEU
GENERATE_MAX_NEW_TOKENS = 64
GENERATE_BATCH = 16


def seq2seq_columns(spec: DataSpec, file_columns: Sequence[str], *,
                    validation: bool = False) -> TokenColumns:
    return TokenColumns(source=spec.source_column, target=spec.target_column)


def encode_seq2seq(
    records: Sequence[Record], columns: TokenColumns, tokenizer: PreTrainedTokenizerBase, *,
    max_length: int,
) -> list[Features]:
    """input_ids and attention_mask of the source, labels of the target, per record."""
    assert columns.source is not None and columns.target is not None
    sources = [str(r[columns.source]) for r in records]
    targets = [str(r[columns.target]) for r in records]
    encoded = tokenizer(sources, truncation=True, max_length=max_length)
    labels = tokenizer(text_target=targets, truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
             "labels": labels[i]} for i in range(len(records)) if labels[i]]


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"rougeL", "bleu"} of predictions against one reference each, 0–100."""
    # Imported here, not with the module: the API reads the task registry (this module too)
    # and never scores, and these take seconds to import.
    import sacrebleu
    from rouge_score import rouge_scorer

    if not predictions:
        return {"rougeL": 0.0, "bleu": 0.0}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure
             for pred, ref in zip(predictions, references, strict=True)]
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    return {"rougeL": 100.0 * sum(rouge) / len(rouge), "bleu": float(bleu)}


class Seq2SeqTask(TokenTask):
    name = SEQ2SEQ
    model_class = AutoModelForSeq2SeqLM
    report_metric = "rougeL"
    shift = False
    family = "seq2seq (encoder-decoder)"
    hidden_prefix = "decoder_"
    model_inputs = ("input_ids", "attention_mask", "decoder_input_ids")
    card = TaskCard(
        pipeline_tag="text2text-generation", noun="sequence-to-sequence model",
        metrics=("rougeL", "bleu", "perplexity"),
        usage="""from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
model = AutoModelForSeq2SeqLM.from_pretrained("path/to/this/directory")
inputs = tokenizer(["a text to transform"], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**inputs, max_new_tokens=32),
                             skip_special_tokens=True))""",
    )

    def columns(self, spec: DataSpec, file_columns: Sequence[str], *,
                validation: bool = False) -> TokenColumns:
        return seq2seq_columns(spec, file_columns, validation=validation)

    def encode(self, records: Sequence[Record], columns: TokenColumns,
               tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> list[Features]:
        return encode_seq2seq(records, columns, tokenizer, max_length=max_length)

    def can_load(self, model_type: str, *, is_encoder_decoder: bool) -> bool:
        return is_encoder_decoder and model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    def decoder_start_id(self, config: PretrainedConfig, pad_id: int) -> int | None:
        """The teacher's decoder start token (T5: the pad token; BART: </s>)."""
        for value in (getattr(config, "decoder_start_token_id", None),
                      getattr(getattr(config, "decoder", None), "decoder_start_token_id", None)):
            if isinstance(value, int):
                return value
        return pad_id

    def target_mask(self, batch: dict[str, Tensor]) -> Tensor:
        """Real decoder positions."""
        return (batch["labels"] != IGNORE_INDEX).long()

    def evaluate(self, model: PreTrainedModel, side: Side, data: TaskData, *,
                 device: torch.device, batch_size: int,
                 on_batch: Callable[[], None]) -> dict[str, float]:
        """Perplexity, then ROUGE-L and BLEU of greedy generations at most as long as the
        longest reference target (in tokens), and never longer than `GENERATE_MAX_NEW_TOKENS`."""
        metrics = super().evaluate(model, side, data, device=device, batch_size=batch_size,
                                   on_batch=on_batch)
        if data.eval_pairs:
            longest = max(len(f["labels"]) for f in side.evaluation[:GENERATE_LIMIT])
            metrics.update(self.generation_metrics(
                model, side.tokenizer, data.eval_pairs, device=device,
                max_length=data.max_length,
                max_new_tokens=min(GENERATE_MAX_NEW_TOKENS, longest + 1), on_batch=on_batch,
            ))
        return metrics

    def generation_metrics(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[tuple[str, str]], *, device: torch.device, max_length: int,
        max_new_tokens: int = GENERATE_MAX_NEW_TOKENS, limit: int = GENERATE_LIMIT,
        on_batch: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """ROUGE-L and BLEU of greedy outputs on (source, reference) pairs, through the same
        `generate` that serves predictions."""
        pairs = list(pairs[:limit])
        length = min(max_input_length(model.config, tokenizer), max_length)
        predictions: list[str] = []
        for start in range(0, len(pairs), GENERATE_BATCH):
            if on_batch is not None:
                on_batch()
            chunk = [source for source, _ in pairs[start : start + GENERATE_BATCH]]
            predictions += [out["text"] for out in self.generate(
                model, tokenizer, chunk, max_new_tokens=max_new_tokens, max_length=length,
                device=device)]
        return text_metrics(predictions, [r for _, r in pairs])
