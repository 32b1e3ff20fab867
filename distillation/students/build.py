"""Building the student: an existing model directory, or a smaller copy of the teacher's design.

A fresh student has the teacher's model type and config with the sizes changed. `init="teacher"`
copies the teacher's weights into it: evenly spaced layers (see `layers.even_spread`) and, when
the student is narrower, every hidden-size axis projected onto the top principal directions of
the teacher's word embeddings, so the student starts from a compressed teacher, not from noise.

The same holds for language models (causal and seq2seq, LM heads included; a seq2seq student's
encoder and decoder both get `num_layers`). GPT-2's fused query/key/value projection (`c_attn`)
is projected a third at a time; other fused layouts are copied as they are when the widths
match, and cut to size when the student is narrower.

Attention heads stay whole where the family allows it, with grouped-query attention kept
consistent (`heads`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from distillation.config import StudentSpec
from distillation.losses.layer_map import even_spread
from distillation.models.info import ModelInfo, model_info
from distillation.models.loading import load_model
from distillation.students.heads import head_map, kv_heads
from distillation.tasks import CLASSIFICATION, get_task

ARCH_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")
# Config attributes that hold the feed-forward width, by model family (every one present is set).
INTERMEDIATE_ATTRS = ("intermediate_size", "hidden_dim", "n_inner", "d_ff", "ffn_dim",
                       "encoder_ffn_dim", "decoder_ffn_dim")
# The decoder's own layer and head counts in encoder-decoder configs (T5, BART, Marian).
_DECODER_LAYER_ATTRS = ("num_decoder_layers", "decoder_layers")
_DECODER_HEAD_ATTRS = ("decoder_attention_heads",)
# Layers whose weights are fused query/key/value along one axis (GPT-2's Conv1D `c_attn`).
_FUSED_QKV = re.compile(r"\.c_attn\.(weight|bias)$")
# `<prefix>.layer.3.<rest>`, `.layers.3.`, `.h.3.`, `.block.3.`: a transformer layer's weights.
_LAYER_KEY = re.compile(r"\.(layer|layers|h|block)\.(\d+)\.")
_MAX_SIZE = 1 << 16


def check_architecture(arch: Mapping[str, Any], teacher_info: ModelInfo) -> list[tuple[str, str]]:
    """Problems with a student architecture (missing sizes default to the teacher's)."""
    problems: list[tuple[str, str]] = []
    for key, value in arch.items():
        param = f"student.architecture.{key}"
        if key not in ARCH_KEYS:
            problems.append((param, f"{param}: unknown key; use {', '.join(ARCH_KEYS)}"))
        elif value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append((param, f"{param} must be a whole number, got {value!r}"))
        elif value is not None and not 0 < value <= _MAX_SIZE:
            problems.append((param, f"{param} must be between 1 and {_MAX_SIZE}, got {value}"))
    if problems:
        return problems
    hidden = arch.get("hidden_size") or teacher_info.hidden_size
    heads = arch.get("num_heads") or teacher_info.num_heads
    if heads and hidden % heads:
        key = "hidden_size" if "hidden_size" in arch else "num_heads"
        problems.append((f"student.architecture.{key}",
                         f"student.architecture: hidden_size {hidden} is not divisible by "
                         f"num_heads {heads}"))
    return problems


def student_config(teacher: PreTrainedModel, arch: Mapping[str, int]) -> Any:
    """The teacher's config with the student's sizes (unset sizes stay the teacher's)."""
    return sized_config(teacher.config, arch)


def sized_config(teacher_config: Any, arch: Mapping[str, int]) -> Any:
    """A copy of `teacher_config` with the sizes in `arch` (unset sizes stay the teacher's)."""
    config = copy.deepcopy(teacher_config)
    standard_head_dim = getattr(config, "head_dim", None) == (
        config.hidden_size // config.num_attention_heads)
    if "num_layers" in arch:
        config.num_hidden_layers = arch["num_layers"]
        for name in _DECODER_LAYER_ATTRS:
            if isinstance(getattr(config, name, None), int):
                setattr(config, name, arch["num_layers"])
    if "hidden_size" in arch:
        config.hidden_size = arch["hidden_size"]
    if "num_heads" in arch:
        config.num_attention_heads = arch["num_heads"]
        for name in _DECODER_HEAD_ATTRS:
            if isinstance(getattr(config, name, None), int):
                setattr(config, name, arch["num_heads"])
    if ("hidden_size" in arch or "num_heads" in arch) and isinstance(
        getattr(config, "d_kv", None), int
    ):
        config.d_kv = max(1, config.hidden_size // config.num_attention_heads)  # T5 head width
    if ("hidden_size" in arch or "num_heads" in arch) and standard_head_dim:
        config.head_dim = config.hidden_size // config.num_attention_heads  # Llama's head width
    teacher_kv = getattr(teacher_config, "num_key_value_heads", None)
    if isinstance(teacher_kv, int) and teacher_kv > 0:
        config.num_key_value_heads = kv_heads(config.num_attention_heads, teacher_kv)
    if "intermediate_size" in arch:
        names = [a for a in INTERMEDIATE_ATTRS if hasattr(config, a)] or ["intermediate_size"]
        for name in names:
            setattr(config, name, arch["intermediate_size"])
    config.architectures = None
    return config


def build_student(
    spec: StudentSpec, teacher: PreTrainedModel, *, attn_implementation: str | None = None,
    task: str = CLASSIFICATION, directions: Tensor | None = None,
) -> PreTrainedModel:
    """The student for `task`: a classifier gets the teacher's labels, a language model the
    teacher's vocabulary (through its config)."""
    labels: dict[int, str] = {int(k): str(v) for k, v in (teacher.config.id2label or {}).items()}
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    auto = get_task(task).model_class
    if spec.model_path is not None and not get_task(task).labelled:
        return load_model(auto, spec.model_path, **kwargs)
    if spec.model_path is not None:
        return load_model(
            auto, spec.model_path, num_labels=len(labels), id2label=labels,
            label2id={v: k for k, v in labels.items()}, ignore_mismatched_sizes=True, **kwargs,
        )
    problems = check_architecture(spec.architecture or {}, _info(teacher))
    if problems:
        raise ValueError("; ".join(message for _, message in problems))
    config = student_config(teacher, spec.architecture or {})
    student = auto.from_config(config, **kwargs)
    if spec.init == "teacher":
        init_from_teacher(student, teacher, directions=directions)
    return student


def _info(model: PreTrainedModel) -> ModelInfo:
    return model_info(model.config)


def principal_directions(embeddings: Tensor, k: int) -> Tensor:
    """(D, k): the top-k principal directions of the rows of `embeddings` (V, D), orthonormal."""
    centred = embeddings.float() - embeddings.float().mean(dim=0, keepdim=True)
    # Right singular vectors of the centred matrix; the gram matrix keeps the SVD at D × D.
    _, _, vh = torch.linalg.svd(centred.T @ centred)
    return vh[:k].T.contiguous()


def _is_scale(name: str, tensor: Tensor) -> bool:
    return tensor.ndim == 1 and name.endswith("weight") and bool(
        re.search(r"(layernorm|layer_norm|ln_|norm)", name, re.IGNORECASE)
    )


def transfer(
    name: str, source: Tensor, target: Tensor, projection: Tensor | None, teacher_width: int
) -> Tensor:
    """`source` (a teacher tensor) reshaped to `target`'s shape.

    An axis of the teacher's width becomes the student's by the projection P (D_t × D_s): weights
    W (out, in) become Pᵀ W P, vectors Pᵀ v, and layer-norm scales the diagonal of Pᵀ diag(γ) P.
    A fused query/key/value axis (3 × the teacher's width, GPT-2's `c_attn`) is projected a
    third at a time. Any other axis that differs is cut to size; where the student is larger its
    own init stays.
    """
    result = source.float()
    for axis in range(result.ndim):
        if result.shape[axis] == target.shape[axis] or projection is None:
            continue
        p = projection.pow(2) if _is_scale(name, source) else projection
        if result.shape[axis] == teacher_width and target.shape[axis] == projection.shape[1]:
            result = _project_axis(result, axis, p)
        elif _FUSED_QKV.search(name) and result.shape[axis] == 3 * teacher_width \
                and target.shape[axis] == 3 * projection.shape[1]:
            result = torch.cat([_project_axis(part, axis, p)
                                for part in result.chunk(3, dim=axis)], dim=axis)
    out = target.detach().clone()
    region = tuple(slice(0, min(a, b)) for a, b in zip(result.shape, out.shape, strict=True))
    out[region] = result[region].to(out.dtype)
    return out


def _project_axis(tensor: Tensor, axis: int, projection: Tensor) -> Tensor:
    return torch.movedim(torch.tensordot(torch.movedim(tensor, axis, -1), projection, dims=1),
                         -1, axis)


@torch.no_grad()
def init_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel, *,
                      directions: Tensor | None = None) -> None:
    """Copy the teacher's weights into `student` (evenly spaced layers, whole heads, PCA-projected
    widths): projected onto the first columns of `directions` (the teacher's hidden-state
    directions, `directions.hidden_state_directions`) when given, else onto the principal
    directions of the teacher's word embeddings."""
    s_info, t_info = _info(student), _info(teacher)
    spread = even_spread(s_info.num_layers, t_info.num_layers)
    teacher_state = teacher.state_dict()
    projection = None  # a student as wide or wider copies what fits and keeps its own init
    if s_info.hidden_size < t_info.hidden_size and directions is not None:
        projection = directions[:, : s_info.hidden_size].contiguous()
    elif s_info.hidden_size < t_info.hidden_size:
        embeddings = teacher.get_input_embeddings().weight
        assert isinstance(embeddings, Tensor)
        projection = principal_directions(embeddings, s_info.hidden_size)
    heads = head_map(student.config, teacher.config)
    new_state = {}
    for name, target in student.state_dict().items():
        match = _LAYER_KEY.search(name)
        source_name = name
        if match is not None:
            index = int(match.group(2))
            if index < len(spread):
                source_name = name.replace(match.group(0),
                                           f".{match.group(1)}.{spread[index]}.", 1)
        # A weight only some layers have (T5's relative position bias, in its first block)
        # comes from the teacher's layer of the same index.
        source = teacher_state.get(source_name, teacher_state.get(name))
        if source is None or source.ndim != target.ndim:
            continue
        if heads is not None:
            source = heads.select(name, source)
        new_state[name] = transfer(name, source, target, projection, t_info.hidden_size)
    student.load_state_dict(new_state, strict=False)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

