"""Causal language modelling: a text (or a prompt) → its continuation.

Records: a `text` record is learnt on every token; a `prompt` + `completion` record only on the
completion, its prompt tokens labelled −100. The prompt is tokenised as `generate` tokenises a
prompt (with the tokenizer's special tokens), the completion follows it without them, and an
end-of-sequence token closes the example so the model learns to stop. Labels are the input ids
themselves (Hugging Face's convention); the one-position shift happens where the logits meet the
labels (`token.target_rows`). Quality: perplexity on the target tokens.

Every example says where its answer starts (`prompt_length`: the tokens before it, 0 for a
text record). A prompt with an empty or missing completion is a prompt without an answer yet:
its example is the prompt alone (`len(input_ids) == prompt_length`, every label −100), and the
`generate` stage has the teacher write the answer (`distillation.methods`).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from distillation.config import DataSpec
from distillation.data.records import Record
from distillation.models.info import CAUSAL_LM
from distillation.tasks.base import MissingColumns, TaskCard
from distillation.tasks.token import TokenTask
from distillation.tasks.token_data import IGNORE_INDEX, PROMPT_LENGTH, TokenColumns
from distillation.training.loop import Features


def causal_columns(spec: DataSpec, file_columns: Sequence[str], *,
                   validation: bool = False) -> TokenColumns:
    """A file with both the prompt and the completion column is read as prompt + completion
    (a record's completion may be empty: a prompt without an answer), otherwise as plain text
    (the validation file may rename its text column)."""
    if spec.prompt_column in file_columns and spec.completion_column in file_columns:
        return TokenColumns(prompt=spec.prompt_column, completion=spec.completion_column)
    text = (spec.validation_text_column if validation else None) or spec.text_column
    return TokenColumns(text=text)


def _with_eos(ids: list[int], eos: int | None) -> list[int]:
    return [*ids, eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def answered(prompt: Sequence[int], answer: Sequence[int]) -> Features:
    """The example of `prompt` followed by `answer` (token ids), the loss on the answer only."""
    ids = [*prompt, *answer]
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": [IGNORE_INDEX] * len(prompt) + list(answer), PROMPT_LENGTH: len(prompt)}


def prompt_of(features: Features) -> list[int]:
    """The token ids an example's answer continues (its prompt)."""
    return list(features["input_ids"][: features[PROMPT_LENGTH]])


def has_answer(features: Features) -> bool:
    return len(features["input_ids"]) > features[PROMPT_LENGTH]


def encode_causal(
    records: Sequence[Record], columns: TokenColumns, tokenizer: PreTrainedTokenizerBase, *,
    max_length: int,
) -> list[Features]:
    """input_ids, attention_mask and labels (prompt positions −100) per record.

    Too long: the completion keeps at least half the budget, the prompt keeps its end (the
    tokens nearest the completion); plain text is cut at the end. A prompt without a completion
    keeps at most half the budget too, the rest being the room for the answer the teacher will
    write. A record left with no target token after the shift is dropped, unless it is such a
    prompt.
    """
    eos = tokenizer.eos_token_id
    features: list[Features] = []
    for record in records:
        if columns.text is not None:
            ids = _with_eos(tokenizer(str(record[columns.text]))["input_ids"], eos)[:max_length]
            example: Features = {"input_ids": ids, "attention_mask": [1] * len(ids),
                                 "labels": list(ids), PROMPT_LENGTH: 0}
        else:
            assert columns.prompt is not None and columns.completion is not None
            prompt = tokenizer(str(record[columns.prompt]))["input_ids"]
            text = record.get(columns.completion)
            if text is None or str(text) == "":  # a prompt the teacher answers
                example = answered(prompt[max(0, len(prompt) - (max_length - max_length // 2)):],
                                   [])
                if example["input_ids"]:
                    features.append(example)
                continue
            completion = _with_eos(tokenizer(str(text), add_special_tokens=False)["input_ids"],
                                   eos)
            completion = completion[: max(max_length - len(prompt), max_length // 2)]
            example = answered(prompt[max(0, len(prompt) - (max_length - len(completion))):],
                               completion)
        if any(label != IGNORE_INDEX for label in example["labels"][1:]):
            features.append(example)
    return features


class CausalLMTask(TokenTask):
    name = CAUSAL_LM
    model_class = AutoModelForCausalLM
    report_metric = "perplexity"
    shift = True
    family = "causal"
    card = TaskCard(
        pipeline_tag="text-generation", noun="causal language model",
        metrics=("perplexity",),
        usage="""from transformers import pipeline

generator = pipeline("text-generation", model="path/to/this/directory")
generator("Once upon a time", max_new_tokens=32, do_sample=False)""",
    )

    def columns(self, spec: DataSpec, file_columns: Sequence[str], *,
                validation: bool = False) -> TokenColumns:
        return causal_columns(spec, file_columns, validation=validation)

    def record_columns(self, spec: DataSpec, file_columns: Sequence[str], *,
                       validation: bool) -> dict[str, str | None]:
        columns = self.columns(spec, file_columns, validation=validation)
        if columns.text is not None and columns.text not in file_columns:
            text_param = "data.validation_text_column" if validation else "data.text_column"
            raise MissingColumns(
                text_param,
                f"neither a {columns.text!r} column nor both {spec.prompt_column!r} and "
                f"{spec.completion_column!r}",
                f"causal-lm records are text, or prompt + completion: set {text_param}, or "
                "data.prompt_column and data.completion_column.",
            )
        return super().record_columns(spec, file_columns, validation=validation)

    def encode(self, records: Sequence[Record], columns: TokenColumns,
               tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> list[Features]:
        return encode_causal(records, columns, tokenizer, max_length=max_length)

    def can_load(self, model_type: str, *, is_encoder_decoder: bool) -> bool:
        """Encoder-only families (BERT and the like) have a causal-LM class in transformers but
        attend in both directions unless reconfigured, so they are not taken as causal LMs."""
        return (not is_encoder_decoder and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
