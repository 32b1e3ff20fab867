"""Records → token ids and labels for the token-level tasks, and the batches they train on.

Causal LM: a `text` record is learnt on every token; a `prompt` + `completion` record only on
the completion, its prompt tokens labelled −100. The prompt is tokenised as `Predictor.generate`
tokenises a prompt (with the tokenizer's special tokens), the completion follows it without
them, and an end-of-sequence token closes the example so the model learns to stop. Labels are
the input ids themselves (Hugging Face's convention); the one-position shift happens where the
logits meet the labels (`tasks.target_rows`).

Seq2seq: `source` is the encoder's input, `target` the labels (tokenised as a target); the
decoder inputs are the labels shifted right after the decoder start token, built by the collator
so that teacher and student get the very same decoder inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from distillation.cache import EXAMPLE_INDEX
from distillation.config import DataSpec, JobConfig
from distillation.evaluate import TRAIN_EVAL_LIMIT
from distillation.predict import max_input_length
from distillation.records import Record, read_file
from distillation.tasks import CAUSAL_LM, IGNORE_INDEX, SEQ2SEQ

Features = dict[str, Any]


@dataclass
class TokenColumns:
    """The columns a file's records are read from; `prompt`/`completion` set means that mode."""

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    source: str | None = None
    target: str | None = None

    def wanted(self) -> list[str]:
        return [c for c in (self.text, self.prompt, self.completion, self.source, self.target)
                if c]


def token_columns(task: str, spec: DataSpec, columns: Sequence[str], *,
                  validation: bool = False) -> TokenColumns:
    """Which columns of a file with `columns` the task reads.

    A causal-LM file with both the prompt and the completion column is read as prompt +
    completion, otherwise as plain text (the validation file may rename its text column).
    """
    if task == SEQ2SEQ:
        return TokenColumns(source=spec.source_column, target=spec.target_column)
    if task != CAUSAL_LM:
        raise ValueError(f"{task!r} is not a token-level task")
    if spec.prompt_column in columns and spec.completion_column in columns:
        return TokenColumns(prompt=spec.prompt_column, completion=spec.completion_column)
    text = (spec.validation_text_column if validation else None) or spec.text_column
    return TokenColumns(text=text)


def read_token_records(path: Path, task: str, spec: DataSpec, *,
                       validation: bool = False) -> tuple[list[Record], TokenColumns]:
    """The file's records and the columns they are read from; ValueError naming the record
    when a column is missing or empty."""
    dataset = read_file(path)
    columns = token_columns(task, spec, dataset.columns, validation=validation)
    for number, record in enumerate(dataset.records, start=1):
        missing = [c for c in columns.wanted() if record.get(c) in (None, "")]
        if missing:
            raise ValueError(f"{path.name}: record {number} has no {', '.join(missing)}")
    return dataset.records, columns


def _with_eos(ids: list[int], eos: int | None) -> list[int]:
    return [*ids, eos] if eos is not None and (not ids or ids[-1] != eos) else ids


def encode_causal(
    records: Sequence[Record], columns: TokenColumns, tokenizer: PreTrainedTokenizerBase, *,
    max_length: int,
) -> list[Features]:
    """input_ids, attention_mask and labels (prompt positions −100) per record.

    Too long: the completion keeps at least half the budget, the prompt keeps its end (the
    tokens nearest the completion); plain text is cut at the end. A record left with no target
    token after the shift is dropped.
    """
    eos = tokenizer.eos_token_id
    features: list[Features] = []
    for record in records:
        if columns.text is not None:
            ids = _with_eos(tokenizer(str(record[columns.text]))["input_ids"], eos)[:max_length]
            labels = list(ids)
        else:
            assert columns.prompt is not None and columns.completion is not None
            prompt = tokenizer(str(record[columns.prompt]))["input_ids"]
            completion = _with_eos(tokenizer(str(record[columns.completion]),
                                             add_special_tokens=False)["input_ids"], eos)
            completion = completion[: max(max_length - len(prompt), max_length // 2)]
            prompt = prompt[max(0, len(prompt) - (max_length - len(completion))):]
            ids = prompt + completion
            labels = [IGNORE_INDEX] * len(prompt) + completion
        if any(label != IGNORE_INDEX for label in labels[1:]):
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                             "labels": labels})
    return features


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


def encode_tokens(
    task: str, records: Sequence[Record], columns: TokenColumns,
    tokenizer: PreTrainedTokenizerBase, *, max_length: int,
) -> list[Features]:
    """`encode_causal` or `encode_seq2seq`, by task."""
    encode = encode_causal if task == CAUSAL_LM else encode_seq2seq
    return encode(records, columns, tokenizer, max_length=max_length)


def _pad(rows: Sequence[list[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def shift_right(labels: Tensor, *, start_id: int, pad_id: int) -> Tensor:
    """Decoder inputs from labels: the start token, then the labels but the last (−100 → pad)."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_id)


class TokenCollator:
    """Pads on the right (ids with the pad token, labels with −100); for seq2seq it also builds
    `decoder_input_ids` from the labels. Rows that say which example they are
    (`cache.EXAMPLE_INDEX`, for the teacher cache) make a batch that says it too."""

    def __init__(self, pad_id: int, decoder_start_id: int | None = None) -> None:
        self.pad_id = pad_id
        self.decoder_start_id = decoder_start_id

    def __call__(self, rows: list[Features]) -> dict[str, Tensor]:
        batch = {
            "input_ids": _pad([r["input_ids"] for r in rows], self.pad_id),
            "attention_mask": _pad([r["attention_mask"] for r in rows], 0),
            "labels": _pad([r["labels"] for r in rows], IGNORE_INDEX),
        }
        if self.decoder_start_id is not None:
            batch["decoder_input_ids"] = shift_right(batch["labels"], start_id=self.decoder_start_id,
                                                     pad_id=self.pad_id)
        if EXAMPLE_INDEX in rows[0]:
            batch[EXAMPLE_INDEX] = torch.tensor([r[EXAMPLE_INDEX] for r in rows], dtype=torch.long)
        return batch


@dataclass
class TokenData:
    tokenizer: PreTrainedTokenizerBase  # the teacher's, shared by the student
    train: list[Features]
    eval: list[Features]
    eval_split: str  # "validation", or "train" when no validation file was given
    collator: TokenCollator
    max_length: int  # tokens per source / sequence (and per target, for seq2seq)
    # seq2seq: (source, reference target) of the evaluation records, for generation metrics.
    eval_pairs: list[tuple[str, str]]


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's padding id; a tokenizer with none (GPT-2's) pads with end-of-sequence."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the teacher's tokenizer has neither a padding nor an "
                             "end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)  # type: ignore[arg-type]


def decoder_start_id(config: PretrainedConfig, pad_id: int) -> int:
    """The teacher's decoder start token (T5: the pad token; BART: </s>)."""
    for value in (getattr(config, "decoder_start_token_id", None),
                  getattr(getattr(config, "decoder", None), "decoder_start_token_id", None)):
        if isinstance(value, int):
            return value
    return pad_id


def prepare_token_data(config: JobConfig, teacher_config: PretrainedConfig) -> TokenData:
    """Read and encode the training (and validation) file with the teacher's tokenizer."""
    task = config.task
    tokenizer = AutoTokenizer.from_pretrained(str(config.teacher_path))
    pad_id = pad_token_id(tokenizer)
    max_length = min(config.data.max_seq_length, max_input_length(teacher_config, tokenizer))

    records, columns = read_token_records(config.train_file, task, config.data)
    train = encode_tokens(task, records, columns, tokenizer, max_length=max_length)
    if config.validation_file is not None:
        eval_records, eval_columns = read_token_records(config.validation_file, task,
                                                        config.data, validation=True)
        eval_split = "validation"
    else:
        eval_records, eval_columns = records[:TRAIN_EVAL_LIMIT], columns
        eval_split = "train"
    evaluation = encode_tokens(task, eval_records, eval_columns, tokenizer, max_length=max_length)
    if not train or not evaluation:
        raise ValueError(f"no {'training' if not train else eval_split} example has a target "
                         "token left after tokenising: check the data's columns")
    pairs = ([(str(r[eval_columns.source]), str(r[eval_columns.target])) for r in eval_records]
             if task == SEQ2SEQ and eval_columns.source and eval_columns.target else [])
    start = decoder_start_id(teacher_config, pad_id) if task == SEQ2SEQ else None
    return TokenData(tokenizer=tokenizer, train=train, eval=evaluation, eval_split=eval_split,
                     collator=TokenCollator(pad_id, start), max_length=max_length,
                     eval_pairs=pairs)
