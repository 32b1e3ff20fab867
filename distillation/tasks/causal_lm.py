"""Causal language modelling: a text (or a prompt, or a conversation) → its continuation.

Records: a `text` record is learnt on every token; a `prompt` + `completion` record only on the
completion, its prompt tokens labelled −100; a chat record (`messages`, see `data.chat`) through
the teacher's chat template, learnt on its assistant turns only (`data.chat_template`). The
prompt is tokenised as `generate` tokenises a prompt (with the tokenizer's special tokens), the
completion follows it without them, and an end-of-sequence token closes the example so the model
learns to stop. Labels are the input ids themselves (Hugging Face's convention); the one-position
shift happens where the logits meet the labels (`token.target_rows`). Quality: perplexity on the
target tokens.

Every example also says where its final answer starts (`prompt_length`: 0 for a text). A prompt
with no answer yet (a conversation ending with the user's turn, a prompt whose completion is
empty or missing) is kept as its prompt alone (`len(input_ids) == prompt_length`, no target),
for a stage that has the teacher answer it (`token_data.unanswered` finds them).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from distillation.config import DataSpec
from distillation.data.chat import CHAT_COLUMN
from distillation.data.chat_template import encode_conversation
from distillation.data.records import Record
from distillation.models.info import CAUSAL_LM
from distillation.tasks.base import MissingColumns, TaskCard, TaskData
from distillation.tasks.token import TokenTask
from distillation.tasks.token_data import IGNORE_INDEX, PROMPT_LENGTH, TokenColumns
from distillation.training.loop import Features


def causal_columns(spec: DataSpec, file_columns: Sequence[str], *,
                   validation: bool = False) -> TokenColumns:
    """A file of chat records (`messages`) is read as conversations; one with the prompt column
    (and the completion column, or no text column) as prompt + completion, the completion
    possibly empty or missing; otherwise as plain text (the validation file may rename its text
    column)."""
    text = (spec.validation_text_column if validation else None) or spec.text_column
    if CHAT_COLUMN in file_columns:
        return TokenColumns(messages=CHAT_COLUMN)
    if spec.prompt_column in file_columns and (spec.completion_column in file_columns
                                               or text not in file_columns):
        return TokenColumns(prompt=spec.prompt_column, completion=spec.completion_column)
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


def fit_example(prompt: list[int], prompt_labels: list[int], answer: list[int], *,
                max_length: int) -> Features:
    """An example of at most `max_length` tokens: the answer keeps at least half the budget
    (cut at its end), the prompt keeps its end (the tokens nearest the answer). A prompt with no
    answer keeps at most half the budget, leaving the rest for the answer it is to get, and has
    no target at all (not even an earlier answer of its conversation)."""
    if answer:
        answer = answer[: max(max_length - len(prompt), max_length // 2)]
        room = max_length - len(answer)
    else:
        room = max_length - max_length // 2
        prompt_labels = [IGNORE_INDEX] * len(prompt)
    cut = max(0, len(prompt) - room)
    ids = prompt[cut:] + answer
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": prompt_labels[cut:] + answer, PROMPT_LENGTH: len(prompt) - cut}


def _has_target(labels: list[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels[1:])


def encode_causal(
    records: Sequence[Record], columns: TokenColumns, tokenizer: PreTrainedTokenizerBase, *,
    max_length: int,
) -> list[Features]:
    """input_ids, attention_mask, labels (−100 where nothing is learnt) and prompt_length per
    record, cut to `max_length` by `fit_example` (plain text at its end).

    A prompt with no answer is kept with no target; an answered record left with no target
    token after the shift (a one-token text) is dropped. ValueError naming the record when its
    conversation cannot be encoded.
    """
    eos = tokenizer.eos_token_id
    features: list[Features] = []
    for number, record in enumerate(records, start=1):
        row: Features
        if columns.text is not None:
            ids = _with_eos(tokenizer(str(record[columns.text]))["input_ids"], eos)[:max_length]
            row = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids),
                   PROMPT_LENGTH: 0}
        elif columns.messages is not None:
            try:
                chat = encode_conversation(tokenizer, record[columns.messages])
            except ValueError as exc:
                raise ValueError(f"record {number}: {exc}") from None
            split = chat.prompt_length
            row = fit_example(chat.input_ids[:split], chat.labels[:split],
                              chat.input_ids[split:], max_length=max_length)
        else:
            assert columns.prompt is not None and columns.completion is not None
            prompt = tokenizer(str(record[columns.prompt]))["input_ids"]
            completion = record.get(columns.completion)
            answer = (_with_eos(tokenizer(str(completion), add_special_tokens=False)["input_ids"],
                                eos) if completion not in (None, "") else [])
            row = fit_example(prompt, [IGNORE_INDEX] * len(prompt), answer,
                              max_length=max_length)
        if len(row["input_ids"]) == row[PROMPT_LENGTH] or _has_target(row["labels"]):
            features.append(row)
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
                f"neither a {columns.text!r} column, a {spec.prompt_column!r} column (and "
                f"{spec.completion_column!r}) nor chat records ({CHAT_COLUMN!r})",
                f"causal-lm records are text, prompt + completion, or chat messages: set "
                f"{text_param}, or data.prompt_column and data.completion_column.",
            )
        found = super().record_columns(spec, file_columns, validation=validation)
        # A file of prompts alone is read with no completion column: prompts to be answered.
        return {param: column for param, column in found.items()
                if param != "data.completion_column" or column in file_columns}

    def encode(self, records: Sequence[Record], columns: TokenColumns,
               tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> list[Features]:
        return encode_causal(records, columns, tokenizer, max_length=max_length)

    def answer_prompts(self, data: TaskData) -> list[list[int]]:
        """The prompts of the evaluation examples that have one (not plain texts)."""
        return [prompt_of(f) for f in data.student.evaluation if f[PROMPT_LENGTH] > 0]

    def can_load(self, model_type: str, *, is_encoder_decoder: bool) -> bool:
        """Encoder-only families (BERT and the like) have a causal-LM class in transformers but
        attend in both directions unless reconfigured, so they are not taken as causal LMs."""
        return (not is_encoder_decoder and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
