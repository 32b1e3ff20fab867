"""What a Hugging Face model directory holds, read from its config alone (no weights loaded):
its architecture's task, its sizes, its labels, and the longest input it takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PretrainedConfig, PreTrainedTokenizerBase

from distillation.models.files import UnsafeModel
from distillation.models.loading import load_config

# The tasks an architecture can serve (`distillation.tasks` holds what each one means).
CLASSIFICATION = "sequence-classification"
CAUSAL_LM = "causal-lm"
SEQ2SEQ = "seq2seq"
SEQ_CLS_SUFFIXES = ("ForSequenceClassification",)
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
SEQ2SEQ_SUFFIXES = ("ForConditionalGeneration", "ForSeq2SeqLM", "MTModel")
BASE_TASK = "feature-extraction"  # a base model with no task head (e.g. the bundled MiniLM)


@dataclass
class ModelInfo:
    model_type: str
    task: str
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int | None
    vocab_size: int
    is_encoder_decoder: bool
    labels: list[str] | None


def task_of(config: PretrainedConfig) -> str:
    """The task a config's architecture serves: classification, causal LM, seq2seq or base model."""
    for arch in config.architectures or []:
        if arch.endswith(SEQ_CLS_SUFFIXES):
            return CLASSIFICATION
        if arch.endswith(SEQ2SEQ_SUFFIXES) or (
            config.is_encoder_decoder and arch.endswith("LMHeadModel")
        ):
            return SEQ2SEQ
        if arch.endswith(CAUSAL_SUFFIXES):
            return CAUSAL_LM
    return BASE_TASK


def _first_attr(config: PretrainedConfig, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def inspect_model(path: str | Path) -> ModelInfo:
    """Read `config.json` of a model directory; raises ValueError when it is not a usable model
    (UnsafeModel, naming the file and key, when the folder's files are refused)."""
    try:
        config = load_config(path)
    except UnsafeModel:
        raise
    except Exception as exc:  # transformers raises many kinds for a bad config
        raise ValueError(f"not a loadable Hugging Face config: {exc}") from exc
    return model_info(config)


def model_info(config: PretrainedConfig) -> ModelInfo:
    """What a loaded config describes (the same as `inspect_model` gives for its directory)."""
    task = task_of(config)
    labels = None
    if task == CLASSIFICATION:
        id2label = getattr(config, "id2label", None) or {}
        labels = [str(id2label[i]) for i in sorted(id2label, key=int)]
    return ModelInfo(
        model_type=str(config.model_type),
        task=task,
        num_layers=_first_attr(config, "num_hidden_layers", "n_layer", "num_layers") or 0,
        hidden_size=_first_attr(config, "hidden_size", "n_embd", "d_model") or 0,
        num_heads=_first_attr(config, "num_attention_heads", "n_head", "num_heads") or 0,
        intermediate_size=_first_attr(config, "intermediate_size", "n_inner", "d_ff"),
        vocab_size=_first_attr(config, "vocab_size") or 0,
        is_encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
        labels=labels,
    )


MAX_LENGTH = 512
# Models whose position ids start after the padding index, so two positions are unusable.
_OFFSET_POSITIONS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}


def max_input_length(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest input the model takes: the tokenizer's and the position table's limit, ≤ 512."""
    limit = MAX_LENGTH
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < limit:
        limit = tok_max
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        positions -= _OFFSET_POSITIONS.get(str(config.model_type), 0)
        limit = min(limit, positions)
    return limit
