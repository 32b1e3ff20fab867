"""What the token-level tasks (causal LM and seq2seq) share: the loss terms compare one row of
logits per target token, the teacher cache keeps the top-k tokens of each, quality is perplexity,
and a model predicts by greedy generation.

Causal LM: position t predicts token t + 1, so logits `[:, :-1]` are matched with labels `[:, 1:]`
(the shift); seq2seq: decoder position t predicts `labels[t]` (the decoder inputs are the labels
shifted right). Either way, positions labelled −100 (prompt, padding) are left out, and each
remaining position becomes one row of logits over the vocabulary, so every row-wise loss term
(kl, ce, mse_logits, ...) applies per target token unchanged.

The student reads the teacher's tokenizer. The teacher cache keeps the top-k tokens per target
position (`token_cache`), so with it `kl` is the top-k KL, and jobs with `reverse_kl`, `jsd` or
`mse_logits` run the teacher every step instead. Speed in the report is one forward pass over
whole examples (prompt and completion; source, and the target as teacher-forced decoder input),
not generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from distillation.config import DataSpec, JobConfig, LossSpec
from distillation.data.records import Record
from distillation.losses.functions import LossInputs
from distillation.models.info import BASE_TASK, ModelInfo, model_info
from distillation.models.loading import load_config, load_model
from distillation.tasks.base import Problems, Side, Task, TaskData, attn_kwargs, model_kind
from distillation.tasks.token_cache import FULL_DISTRIBUTION_LOSSES, TopKFormat
from distillation.tasks.token_data import (
    TokenColumns,
    prepare_token_data,
    target_rows,
)
from distillation.training.loop import Collator, Features, autocast, to_device
from distillation.training.teacher_cache import EXAMPLE_INDEX, TeacherCache
from distillation.training.topk_cache import TopKRows

PREDICT_BATCH = 32


def decoder_layers(config: PretrainedConfig) -> int:
    """The layers whose outputs token-level layer losses compare: the decoder's for seq2seq."""
    if getattr(config, "is_encoder_decoder", False):
        for name in ("num_decoder_layers", "decoder_layers"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
    return model_info(config).num_layers


@torch.inference_mode()
def perplexity(
    model: nn.Module, features: Sequence[Features], collator: Collator, *, task: TokenTask,
    device: torch.device, batch_size: int, on_batch: Callable[[], None] | None = None,
) -> dict[str, float]:
    """{"perplexity", "loss" (mean NLL per target token), "tokens"} on encoded `features`:
    exp(mean negative log-likelihood over every target token)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(features), batch_size):
        if on_batch is not None:
            on_batch()
        batch = to_device(collator(list(features[start : start + batch_size])), device)
        with autocast(device):
            logits = model(**task.model_batch(batch), use_cache=False).logits
        rows, labels = target_rows(logits, batch["labels"], shift=task.shift)
        total += float(F.cross_entropy(rows.float(), labels, reduction="sum"))
        count += labels.numel()
    loss = total / max(1, count)
    return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "tokens": float(count)}


class TokenTask(Task):
    """The token-level tasks' shared answers; `causal_lm` and `seq2seq` fill in the rest."""

    head = "generate"
    unavailable_losses: ClassVar[Mapping[str, str]] = {
        "logit": "the logit margin loss compares a classifier's per-class margins and does not "
                 "scale to a vocabulary of tokens; use kl, reverse_kl, jsd, mse_logits or ce",
    }
    shift: ClassVar[bool]  # position t predicts token t + 1 (causal LM)
    family: ClassVar[str]  # "use a <family> language model"
    hidden_prefix: ClassVar[str] = ""  # outputs' hidden states and attentions: `<prefix>hidden_states`
    model_inputs: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    # The teacher's next token is what a student shallower or narrower than the teacher almost
    # never predicts before training (SmolLM2-135M cut to 29 of its 30 layers: 78% of them; to 24,
    # 6%; to any student 4x smaller, under 1%), so candidates are ranked by the probability
    # they give it.
    init_score: ClassVar[str] = "likelihood"
    # Measured, it would pay (benchmarks/lm_vocabulary.py): the student's step is mostly its
    # vocabulary-wide head. What it needs is not built: the kept ids' rows of the head, a
    # byte-level BPE tokenizer cut to them with its merges, the teacher's distribution
    # renormalised over them (live and cached), the student's samples mapped back to the
    # teacher's ids for on-policy distillation.
    vocabulary_pruning_refusal: ClassVar[str | None] = (
        "a language model's vocabulary is its output too, and token-level distillation compares "
        "the teacher's and the student's distributions over that one vocabulary, token by token; "
        "pruning it is not built yet, though it would pay (a 4-layer x 256 student of "
        "SmolLM2-135M's design trains 7.4x faster a step on the 7,176 ids 2,000 SST-2 prompts "
        "need than on all 49,152)"
    )

    # -- what each token-level task says ---------------------------------------------------------
    def columns(self, spec: DataSpec, file_columns: Sequence[str], *,
                validation: bool = False) -> TokenColumns:
        """Which columns of a file with `file_columns` the task reads."""
        raise NotImplementedError

    def encode(self, records: Sequence[Record], columns: TokenColumns,
               tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> list[Features]:
        """input_ids, attention_mask and labels per record."""
        raise NotImplementedError

    def can_load(self, model_type: str, *, is_encoder_decoder: bool) -> bool:
        """Whether a base model of this type can be loaded for the task."""
        raise NotImplementedError

    def decoder_start_id(self, config: PretrainedConfig, pad_id: int) -> int | None:
        """The token the decoder inputs start with (seq2seq); None: no decoder inputs."""
        return None

    def target_mask(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, L) mask of the positions hidden-state losses compare."""
        return batch["attention_mask"]

    def model_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What a model's forward takes from a batch (no labels: the losses are ours)."""
        return {k: batch[k] for k in self.model_inputs}

    # -- checks ----------------------------------------------------------------------------------
    def record_columns(self, spec: DataSpec, file_columns: Sequence[str], *,
                       validation: bool) -> dict[str, str | None]:
        columns = self.columns(spec, file_columns, validation=validation)
        text_param = "data.validation_text_column" if validation else "data.text_column"
        found = {text_param: columns.text, "data.prompt_column": columns.prompt,
                 "data.completion_column": columns.completion,
                 "data.source_column": columns.source, "data.target_column": columns.target}
        return {param: column for param, column in found.items() if column is not None}

    def check_pair(self, teacher: ModelInfo, student: ModelInfo | None, *,
                   teacher_vocab: str | None = None, student_vocab: str | None = None) -> Problems:
        """A student must be the teacher's kind of model and read the teacher's vocabulary: the
        same size and, where both directories carry a tokenizer, the same token → id map."""
        task = self.name
        problems: Problems = []
        if teacher.task == BASE_TASK and not self.can_load(
            teacher.model_type, is_encoder_decoder=teacher.is_encoder_decoder
        ):
            problems.append(("teacher.model", f"teacher.model: a base {teacher.model_type} model "
                             f"cannot be loaded as a {task} model; use a {self.family} "
                             "language model"))
        if student is None:
            return problems
        if student.is_encoder_decoder != teacher.is_encoder_decoder:
            return [*problems, ("student.model", f"student.model is {model_kind(student)} model "
                                f"but the teacher is {model_kind(teacher)} model: token-level "
                                "distillation needs a student of the teacher's kind")]
        if student.task not in (BASE_TASK, task) or (student.task == BASE_TASK and not self.can_load(
            student.model_type, is_encoder_decoder=student.is_encoder_decoder
        )):
            problems.append(("student.model", f"student.model is a {student.task} "
                             f"{student.model_type} model; a {task} job needs a {task} student"))
        if student.vocab_size != teacher.vocab_size:
            problems.append(("student.model", f"student.model has a vocabulary of "
                             f"{student.vocab_size} tokens, the teacher {teacher.vocab_size}: "
                             "token-level distillation needs the teacher's vocabulary; use a "
                             "student built with the teacher's tokenizer, or student.architecture"))
        elif teacher_vocab and student_vocab and teacher_vocab != student_vocab:
            problems.append(("student.model", "student.model's tokenizer maps tokens to ids "
                             "differently from the teacher's: token-level distillation needs the "
                             "teacher's vocabulary; use a student built with the teacher's "
                             "tokenizer, or student.architecture"))
        return problems

    # -- data and models -------------------------------------------------------------------------
    def prepare(self, config: JobConfig, teacher: ModelInfo) -> TaskData:
        return prepare_token_data(config, self, load_config(config.teacher_path))

    def load_model(self, path: Path, data: TaskData, *, attn: str | None,
                   new_head: bool = False) -> PreTrainedModel:
        return load_model(self.model_class, path, **attn_kwargs(attn))

    def finetune_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(**self.model_batch(batch), use_cache=False).logits
        rows, labels = target_rows(logits, batch["labels"], shift=self.shift)
        if labels.numel() == 0:  # prompts without an answer only: nothing to learn (not NaN)
            return logits.sum() * 0.0
        return F.cross_entropy(rows.float(), labels)

    def loss_specs(self, specs: list[LossSpec]) -> list[LossSpec]:
        # A sequence's first position means little to a causal model or a decoder: cosine pools
        # the mean of the compared positions instead.
        return [replace(spec, pooling="mean") if spec.type == "cosine" else spec for spec in specs]

    def loss_shape(self, config: PretrainedConfig) -> ModelInfo:
        """`model_info` with the layer count that layer losses see (see `decoder_layers`)."""
        return replace(model_info(config), num_layers=decoder_layers(config))

    # -- the distillation step -------------------------------------------------------------------
    def forward_inputs(self, model: nn.Module, batch: dict[str, Tensor],
                       prefix: str = "") -> dict[str, Any]:
        return {**self.model_batch(batch), "use_cache": False}

    def cache_skip_reason(self, loss_types: Collection[str]) -> str | None:
        full = [name for name in FULL_DISTRIBUTION_LOSSES if name in loss_types]
        if full:
            return (f"{' and '.join(full)} {'needs' if len(full) == 1 else 'need'} the teacher's "
                    "full distribution over the vocabulary, and the cache keeps only its top-k "
                    "tokens per position; the teacher runs every step instead")
        return None

    def cache_format(self, config: JobConfig, data: TaskData) -> TopKFormat:
        return TopKFormat(self, config.hyperparameters.teacher_cache_top_k)

    def cached_teacher(self, cache: TeacherCache, batch: dict[str, Tensor]) -> TopKRows:
        return cache.outputs.lookup(batch[EXAMPLE_INDEX]).to(batch["labels"].device)  # type: ignore[no-any-return]

    def loss_inputs(self, batch: dict[str, Tensor], student_out: Any, teacher_out: Any,
                    cached: Any, *, hidden: bool, attentions: bool) -> LossInputs:
        """Logits as target rows; hidden states and attention maps (the decoder's, for seq2seq)
        per position, with their mask. `cached`: the teacher's top-k rows, one per target
        position in the order `target_rows` gives."""
        s_logits, labels = target_rows(student_out.logits, batch["labels"], shift=self.shift)
        t_logits = (target_rows(teacher_out.logits, batch["labels"], shift=self.shift)[0]
                    if teacher_out is not None else None)
        prefix = self.hidden_prefix
        return LossInputs(
            student_logits=s_logits, teacher_logits=t_logits, labels=labels, teacher_topk=cached,
            attention_mask=self.target_mask(batch),
            student_hidden=getattr(student_out, f"{prefix}hidden_states") if hidden else None,
            teacher_hidden=getattr(teacher_out, f"{prefix}hidden_states") if hidden else None,
            student_attentions=getattr(student_out, f"{prefix}attentions") if attentions else None,
            teacher_attentions=getattr(teacher_out, f"{prefix}attentions") if attentions else None,
        )

    def prediction_rows(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(**self.forward_inputs(model, batch)).logits
        return target_rows(logits, batch["labels"], shift=self.shift)[0]

    # -- evaluation ------------------------------------------------------------------------------
    def epoch_metrics(self, model: nn.Module, data: TaskData, *, device: torch.device,
                      batch_size: int, on_batch: Callable[[], None]) -> dict[str, float]:
        ppl = perplexity(model, data.student.evaluation, data.student.collator, task=self,
                         device=device, batch_size=batch_size, on_batch=on_batch)
        return {"eval_perplexity": ppl["perplexity"]}

    def evaluate(self, model: PreTrainedModel, side: Side, data: TaskData, *,
                 device: torch.device, batch_size: int,
                 on_batch: Callable[[], None]) -> dict[str, float]:
        return {"perplexity": perplexity(model, side.evaluation, side.collator, task=self,
                                         device=device, batch_size=batch_size,
                                         on_batch=on_batch)["perplexity"]}

    # -- prediction ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 inputs: Sequence[str], *, max_new_tokens: int, max_length: int,
                 device: torch.device) -> list[dict[str, Any]]:
        """[{"text"}] for each prompt: greedy decoding, the continuation only for causal LMs."""
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        causal = self.shift
        # A causal LM continues from the last position, so prompts are padded on the left.
        tokenizer.padding_side = "left" if causal else "right"
        outputs: list[dict[str, Any]] = []
        for start in range(0, len(inputs), PREDICT_BATCH):
            chunk = list(inputs[start : start + PREDICT_BATCH])
            encoded = tokenizer(
                chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
            ).to(device)
            generated = model.generate(  # type: ignore[operator]
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,  # the KV cache: each new token attends to cached keys, not a re-run
                pad_token_id=tokenizer.pad_token_id,
            )
            if causal:
                generated = generated[:, encoded["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            outputs.extend({"text": text.strip() if not causal else text} for text in texts)
        return outputs
