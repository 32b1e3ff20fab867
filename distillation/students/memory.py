"""How much accelerator memory a job needs per device, estimated from the models' configs alone
(nothing is loaded: the models are built on PyTorch's `meta` device, which allocates no storage).

The estimate is the peak of the two stages that train on the device:

- **distill**: the teacher's weights (fp32, frozen: no gradients), the student's weights +
  gradients + AdamW's two moments (4 fp32 tensors per parameter, plus AdamW's one-element `step`
  tensor per parameter tensor), and the activations one batch of `batch_size / devices` examples
  at `max_length` tokens keeps for the backward pass (the student's), plus one teacher layer's
  working set and the teacher's logits (the teacher runs under `no_grad`, so it keeps nothing
  between layers);
- **finetune_teacher** (when the job fine-tunes its teacher): the teacher trained the same way.

Parameters and optimizer state are counted exactly (the test compares them with a real AdamW
step). Activations follow the per-layer accounting of Korthikanti et al., "Reducing Activation
Recomputation in Large Transformer Models" (2022), in fp32 with 1-byte dropout masks: per layer
`34·s·b·h + 8·s·b·i + 9·a·s²·b` bytes (s tokens, b examples, h hidden, i feed-forward, a heads),
plus the embeddings' output and, for language models, the logits over the vocabulary. That is an
upper bound under bf16 autocast on CUDA (most activations take 2 bytes there) and a rough one
everywhere (attention kernels that recompute, such as SDPA, keep less); the test holds it within
a factor of 2 of the tensors autograd really saves for a tiny model. CUDA's context and the
allocator's slack are not counted: configure a queue's memory a little below the card's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PretrainedConfig

from distillation.models.info import model_info
from distillation.tasks import get_task

FP32 = 4
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, each the parameter's size
# Saved elements of one transformer layer per token (see the module notes): the attention block
# keeps its input, Q, K, V, context and output-projection input (and a dropout mask), the two
# LayerNorms their inputs, the MLP its input, the pre- and post-activation and a dropout mask.
_LAYER_HIDDEN_BYTES = 34
_LAYER_INTERMEDIATE_BYTES = 8
_LAYER_ATTENTION_BYTES = 9
_EMBEDDING_HIDDEN_BYTES = 3 * FP32  # summed embeddings, LayerNorm, dropout
_LOGIT_COPIES = 3  # logits, their log-softmax and softmax (KL / CE)


@dataclass(frozen=True)
class ModelSize:
    """Unique parameters (tied weights counted once) and parameter tensors of a model."""

    parameters: int
    tensors: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device, by part; `total` is what routing compares with a queue's memory."""

    teacher_weights: int
    student_training: int  # weights + gradients + AdamW state
    activations: int  # the student's saved activations + the teacher's forward working set
    finetune: int  # the peak of fine-tuning the teacher (0 when the job does not)
    batch_per_device: int
    max_length: int

    @property
    def distill(self) -> int:
        return self.teacher_weights + self.student_training + self.activations

    @property
    def total(self) -> int:
        return max(self.distill, self.finetune)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "distill": self.distill, "total": self.total}


def model_size(config: PretrainedConfig, model_class: Any) -> ModelSize:
    """Exact parameter counts of `model_class` built from `config` on the meta device."""
    with torch.device("meta"):
        model = model_class.from_config(config)
    seen: dict[int, int] = {}
    for param in model.parameters():  # named_parameters dedupes tied weights too
        seen[id(param)] = param.numel()
    return ModelSize(parameters=sum(seen.values()), tensors=len(seen))


def weights_bytes(size: ModelSize) -> int:
    """fp32 weights."""
    return size.parameters * FP32


def training_state_bytes(size: ModelSize) -> int:
    """fp32 weights, gradients and AdamW's two moments, plus AdamW's `step` (a one-element fp32
    tensor per parameter tensor)."""
    return size.parameters * FP32 * (2 + ADAMW_MOMENTS) + size.tensors * FP32


def _layers(config: PretrainedConfig) -> int:
    info = model_info(config)
    decoder = getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None)
    if info.is_encoder_decoder:  # the encoder's layers and the decoder's (with cross-attention)
        return info.num_layers + int(decoder or info.num_layers)
    return info.num_layers


def _outputs_vocabulary(config: PretrainedConfig, task: str) -> bool:
    return get_task(task).head == "generate"


def activation_bytes(config: PretrainedConfig, *, task: str, batch: int, length: int,
                     saved: bool = True) -> int:
    """Activations of one forward pass of `batch` examples of `length` tokens: every layer's
    (`saved`, a training step keeps them for backward) or one layer's working set (no_grad),
    plus embeddings and logits."""
    info = model_info(config)
    s, b, h = length, batch, info.hidden_size
    i = info.intermediate_size or 4 * h
    a = info.num_heads or 1
    layer = (_LAYER_HIDDEN_BYTES * s * b * h + _LAYER_INTERMEDIATE_BYTES * s * b * i
             + _LAYER_ATTENTION_BYTES * a * s * s * b)
    total = layer * (_layers(config) if saved else 1) + _EMBEDDING_HIDDEN_BYTES * s * b * h
    if _outputs_vocabulary(config, task):
        total += _LOGIT_COPIES * FP32 * s * b * info.vocab_size
    else:
        total += _LOGIT_COPIES * FP32 * b * max(1, len(info.labels or [0, 0]))
    return total


def estimate_memory(
    teacher_config: PretrainedConfig,
    student_config: PretrainedConfig,
    *,
    task: str,
    batch_size: int,
    max_length: int,
    devices: int = 1,
    finetune_batch_size: int | None = None,
) -> MemoryEstimate:
    """Bytes per device for a job distilling `teacher_config` into `student_config` (see the
    module notes); `finetune_batch_size` set: the job fine-tunes its teacher first."""
    model_class = get_task(task).model_class
    teacher, student = model_size(teacher_config, model_class), model_size(student_config,
                                                                           model_class)
    per_device = math.ceil(batch_size / max(1, devices))
    activations = (
        activation_bytes(student_config, task=task, batch=per_device, length=max_length)
        + activation_bytes(teacher_config, task=task, batch=per_device, length=max_length,
                           saved=False))
    finetune = 0
    if finetune_batch_size is not None:  # fine-tuning runs on one device, before distilling
        finetune = training_state_bytes(teacher) + activation_bytes(
            teacher_config, task=task, batch=finetune_batch_size, length=max_length)
    return MemoryEstimate(
        teacher_weights=weights_bytes(teacher), student_training=training_state_bytes(student),
        activations=activations, finetune=finetune, batch_per_device=per_device,
        max_length=max_length)


def format_bytes(n: int | float) -> str:
    """1536 → '1.5 KiB' (binary units, as queue sizes are written)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
