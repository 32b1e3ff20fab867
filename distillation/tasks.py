"""What differs between the tasks: the model class of each, and how token-level tasks turn
(batch × positions) of logits into the rows the loss terms take.

Causal LM: position t predicts token t + 1, so logits `[:, :-1]` are matched with labels `[:, 1:]`
(the shift); seq2seq: decoder position t predicts `labels[t]` (the decoder inputs are the labels
shifted right). Either way, positions labelled −100 (prompt, padding) are left out, and each
remaining position becomes one row of logits over the vocabulary, so every row-wise loss term
(kl, ce, mse_logits, ...) applies per target token unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from distillation.inspect import ModelInfo, model_info
from distillation.losses import LossInputs
from distillation.topk_cache import TopKRows

CLASSIFICATION = "sequence-classification"
CAUSAL_LM = "causal-lm"
SEQ2SEQ = "seq2seq"
TOKEN_TASKS = (CAUSAL_LM, SEQ2SEQ)
IGNORE_INDEX = -100

_MODEL_CLASSES: dict[str, Any] = {
    CLASSIFICATION: AutoModelForSequenceClassification,
    CAUSAL_LM: AutoModelForCausalLM,
    SEQ2SEQ: AutoModelForSeq2SeqLM,
}


def model_class(task: str) -> Any:
    """The `AutoModelFor…` class that loads a model for `task`."""
    try:
        return _MODEL_CLASSES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}") from None


def can_serve(task: str, model_type: str, *, is_encoder_decoder: bool) -> bool:
    """Whether a model of this type can be loaded for a token-level task.

    Encoder-only families (BERT and the like) have a causal-LM class in transformers but attend
    in both directions unless reconfigured, so they are not taken as causal LMs here.
    """
    if task == SEQ2SEQ:
        return is_encoder_decoder and model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    if task == CAUSAL_LM:
        return (not is_encoder_decoder and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    return True


def decoder_layers(config: PretrainedConfig) -> int:
    """The layers whose outputs token-level layer losses compare: the decoder's for seq2seq."""
    if getattr(config, "is_encoder_decoder", False):
        for name in ("num_decoder_layers", "decoder_layers"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
    return model_info(config).num_layers


def loss_shape(config: PretrainedConfig) -> ModelInfo:
    """`model_info` with the layer count that layer losses see (see `decoder_layers`)."""
    return replace(model_info(config), num_layers=decoder_layers(config))


def target_rows(logits: Tensor, labels: Tensor, *, shift: bool) -> tuple[Tensor, Tensor]:
    """(N, V) logits and (N,) labels of the N target positions (labels ≠ −100).

    `shift` (causal LM): logits at t are compared with the label at t + 1.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]


def target_mask(batch: dict[str, Tensor], task: str) -> Tensor:
    """(B, L) mask of the positions hidden-state losses compare: real tokens for a causal LM,
    real decoder positions for seq2seq."""
    if task == SEQ2SEQ:
        return (batch["labels"] != IGNORE_INDEX).long()
    return batch["attention_mask"]


def model_batch(batch: dict[str, Tensor], task: str) -> dict[str, Tensor]:
    """What a token-level model's forward takes from a batch (no labels: losses are ours)."""
    keys = ["input_ids", "attention_mask"]
    if task == SEQ2SEQ:
        keys.append("decoder_input_ids")
    return {k: batch[k] for k in keys}


def token_loss_inputs(
    task: str, batch: dict[str, Tensor], student_out: Any, teacher_out: Any, *,
    hidden: bool, attentions: bool, teacher_topk: TopKRows | None = None,
) -> LossInputs:
    """The loss terms' inputs for one batch of a token-level task: logits as target rows; hidden
    states and attention maps (the decoder's, for seq2seq) per position, with their mask.

    `teacher_out` is None when the teacher's rows come from the top-k cache (`teacher_topk`,
    one row per target position in the order `target_rows` gives).
    """
    shift = task == CAUSAL_LM
    s_logits, labels = target_rows(student_out.logits, batch["labels"], shift=shift)
    t_logits = (target_rows(teacher_out.logits, batch["labels"], shift=shift)[0]
                if teacher_out is not None else None)
    prefix = "decoder_" if task == SEQ2SEQ else ""
    return LossInputs(
        student_logits=s_logits, teacher_logits=t_logits, labels=labels,
        teacher_topk=teacher_topk,
        attention_mask=target_mask(batch, task),
        student_hidden=getattr(student_out, f"{prefix}hidden_states") if hidden else None,
        teacher_hidden=getattr(teacher_out, f"{prefix}hidden_states") if hidden else None,
        student_attentions=getattr(student_out, f"{prefix}attentions") if attentions else None,
        teacher_attentions=getattr(teacher_out, f"{prefix}attentions") if attentions else None,
    )
