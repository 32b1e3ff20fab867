"""Records → token ids and labels for the token-level tasks (causal LM, seq2seq), and the batches
they train on.

Both tasks read the teacher's tokenizer, which the student shares. Which columns a file is read
from and how a record becomes `input_ids` and `labels` is the task's (`causal_lm.encode_causal`,
`seq2seq.encode_seq2seq`); labels of positions that are not targets (prompt, padding) are −100.
The collator pads and, for seq2seq, builds the decoder inputs, so that teacher and student get
the very same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from distillation.config import DataSpec, JobConfig
from distillation.data.chat import conversation_problem
from distillation.data.records import Record, read_file
from distillation.models.info import max_input_length
from distillation.models.loading import load_tokenizer
from distillation.tasks.base import TRAIN_EVAL_LIMIT, Side, TaskData
from distillation.training.loop import Features
from distillation.training.teacher_cache import EXAMPLE_INDEX

IGNORE_INDEX = -100
# Causal-LM examples: the tokens before the final answer (`causal_lm`); a batch carries them too.
PROMPT_LENGTH = "prompt_length"


@dataclass
class TokenColumns:
    """The columns a file's records are read from; `prompt`/`completion` set means that mode,
    `messages` chat records."""

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    source: str | None = None
    target: str | None = None
    messages: str | None = None

    def wanted(self) -> list[str]:
        """The columns every record must fill: all but the completion, which a prompt still to
        be answered lacks."""
        return [c for c in (self.text, self.prompt, self.source, self.target, self.messages) if c]


class TokenTaskView(Protocol):
    """What the data and cache code asks of a token-level task (`token.TokenTask` is one): a
    Protocol, so this module and `token_cache` need not import the task that imports them."""

    name: ClassVar[str]
    shift: ClassVar[bool]

    def columns(self, spec: DataSpec, file_columns: Sequence[str], *,
                validation: bool = False) -> TokenColumns: ...

    def encode(self, records: Sequence[Record], columns: TokenColumns,
               tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> list[Features]: ...

    def decoder_start_id(self, config: PretrainedConfig, pad_id: int) -> int | None: ...

    def model_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]: ...


def read_token_records(path: Path, task: TokenTaskView, spec: DataSpec, *,
                       validation: bool = False) -> tuple[list[Record], TokenColumns]:
    """The file's records and the columns they are read from; ValueError naming the record
    when a column is missing or empty, or a chat record is no conversation."""
    dataset = read_file(path)
    columns = task.columns(spec, dataset.columns, validation=validation)
    # An empty completion is a prompt without an answer yet (`causal_lm`), not a gap.
    required = [c for c in columns.wanted() if c != columns.completion]
    for number, record in enumerate(dataset.records, start=1):
        missing = [c for c in required if record.get(c) in (None, "")]
        if missing:
            raise ValueError(f"{path.name}: record {number} has no {', '.join(missing)}")
        if columns.messages is not None and (
            problem := conversation_problem(record[columns.messages])
        ) is not None:
            raise ValueError(f"{path.name}: record {number}: {problem.message}")
    return dataset.records, columns


def unanswered(features: Sequence[Features]) -> list[int]:
    """Which examples are prompts with no answer yet (`len(input_ids) == prompt_length`)."""
    return [i for i, row in enumerate(features)
            if PROMPT_LENGTH in row and len(row["input_ids"]) == row[PROMPT_LENGTH]]


def target_rows(logits: Tensor, labels: Tensor, *, shift: bool) -> tuple[Tensor, Tensor]:
    """(N, V) logits and (N,) labels of the N target positions (labels ≠ −100).

    `shift` (causal LM): logits at t are compared with the label at t + 1.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


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
    (`teacher_cache.EXAMPLE_INDEX`, for the teacher cache) or where their answer starts
    (`PROMPT_LENGTH`) make a batch that says it too, one number per row."""

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
        for key in (EXAMPLE_INDEX, PROMPT_LENGTH):
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        return batch


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's padding id; a tokenizer with none (GPT-2's) pads with end-of-sequence."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the teacher's tokenizer has neither a padding nor an "
                             "end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)  # type: ignore[arg-type]


def prepare_token_data(config: JobConfig, task: TokenTaskView,
                       teacher_config: PretrainedConfig) -> TaskData:
    """Read and encode the training (and validation) file with the teacher's tokenizer."""
    tokenizer = load_tokenizer(config.teacher_path)
    pad_id = pad_token_id(tokenizer)
    max_length = min(config.data.max_seq_length, max_input_length(teacher_config, tokenizer))

    records, columns = read_token_records(config.train_file, task, config.data)
    train = task.encode(records, columns, tokenizer, max_length=max_length)
    if config.validation_file is not None:
        eval_records, eval_columns = read_token_records(config.validation_file, task,
                                                        config.data, validation=True)
        eval_split = "validation"
    else:
        eval_records, eval_columns = records[:TRAIN_EVAL_LIMIT], columns
        eval_split = "train"
    evaluation = task.encode(eval_records, eval_columns, tokenizer, max_length=max_length)
    if not train or not evaluation:
        raise ValueError(f"no {'training' if not train else eval_split} example has a target "
                         "token left after tokenising: check the data's columns")
    pairs = ([(str(r[eval_columns.source]), str(r[eval_columns.target])) for r in eval_records]
             if eval_columns.source and eval_columns.target else [])
    side = Side(tokenizer, train, evaluation,
                TokenCollator(pad_id, task.decoder_start_id(teacher_config, pad_id)))
    return TaskData(teacher=side, student=side, eval_split=eval_split, max_length=max_length,
                    eval_pairs=pairs)
