"""The distillation loss terms, each a small `nn.Module` with its formula, and their weighted sum.

Over 300 lines on purpose: every term is a few lines beside the formula it computes, and
`build_losses` maps each name of `config.LOSS_TYPES` to its class; one file keeps the formulas
side by side, where a reader compares them.

Logit terms take rows of logits `(N, C)`: one row per example for sequence classification, one
per target token for the token-level tasks (`tasks.token_data.target_rows`). Hidden-state and
attention terms take the models' per-layer outputs; layer indices are 0-based transformer layers,
so layer `i` is `hidden_states[i + 1]` (index 0 holds the embeddings) and `attentions[i]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillation.config import LossSpec
from distillation.losses.checks import as_spec, check_losses
from distillation.losses.layer_map import even_spread
from distillation.training.schedules import Schedule
from distillation.training.topk_cache import TopKRows, topk_kl

__all__ = ["CompositeLoss", "LossInputs", "build_losses", "check_losses"]


class ShapeInfo(Protocol):
    """What the builder needs to know of a model (`model_info.ModelInfo` has it)."""

    num_layers: int
    hidden_size: int
    num_heads: int


@dataclass
class LossInputs:
    """The student's and the teacher's outputs on one batch."""

    student_logits: Tensor
    # None when the teacher's outputs come from the top-k cache (`teacher_topk`) instead.
    teacher_logits: Tensor | None
    labels: Tensor | None = None
    attention_mask: Tensor | None = None  # (B, L): 1 for real tokens; shared by both models
    student_hidden: Sequence[Tensor] | None = None  # embeddings, then one (B, L, D) per layer
    teacher_hidden: Sequence[Tensor] | None = None
    student_attentions: Sequence[Tensor] | None = None  # one (B, H, L, L) per layer
    teacher_attentions: Sequence[Tensor] | None = None
    # The teacher's top-k rows (one per row of `student_logits`), from `topk_cache.TopKCache`.
    teacher_topk: TopKRows | None = None


def _teacher_logits(inputs: LossInputs, loss: str) -> Tensor:
    if inputs.teacher_logits is None:
        raise ValueError(f"the {loss} loss needs the teacher's full logits, which a top-k "
                         "teacher cache does not keep")
    # The teacher is a fixed target: no term sends it a gradient, however its logits were made.
    return inputs.teacher_logits.detach()


def _require(value: Sequence[Tensor] | None, what: str) -> Sequence[Tensor]:
    if value is None:
        raise ValueError(f"this loss needs the models' {what}")
    return value


def _token_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, L, 1) float mask, all ones when no attention mask is given."""
    if mask is None:
        return torch.ones((*x.shape[:2], 1), device=x.device, dtype=x.dtype)
    return mask.to(x.dtype).unsqueeze(-1)


def _projection(student_width: int, teacher_width: int) -> nn.Module:
    # A learned map into the teacher's space; identity when the widths already agree.
    if student_width == teacher_width:
        return nn.Identity()
    return nn.Linear(student_width, teacher_width)


class TemperedLoss(nn.Module):
    """A term on temperature-softened logits; `CompositeLoss` moves its `temperature` on schedule."""

    temperature: float


class KLLoss(TemperedLoss):
    """Soft-target loss: T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    KL(p ‖ q) = Σ_c p_c (log p_c − log q_c); the T² keeps its gradients on the scale of the
    hard-label loss as T grows (Hinton et al., 2015). With the teacher's top-k rows instead of
    its logits (`inputs.teacher_topk`), the KL over the teacher's top-k tokens and a "rest"
    bucket (`topk_cache.topk_kl`; the full KL when k is the vocabulary).
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, inputs: LossInputs) -> Tensor:
        t = self.temperature
        if inputs.teacher_topk is not None:
            return topk_kl(inputs.student_logits, inputs.teacher_topk, t)
        log_q = F.log_softmax(inputs.student_logits.float() / t, dim=-1)
        log_p = F.log_softmax(_teacher_logits(inputs, "kl").float() / t, dim=-1)
        return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * t * t


class ReverseKLLoss(TemperedLoss):
    """Mode-seeking soft-target loss: T² · KL(softmax(s/T) ‖ softmax(t/T)), averaged over the batch.

    KL(q ‖ p) = Σ_c q_c (log q_c − log p_c) with q the student's and p the teacher's softened
    distribution: the student is penalised for mass where the teacher has little, not for missing
    some of the teacher's modes.
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, inputs: LossInputs) -> Tensor:
        t = self.temperature
        log_q = F.log_softmax(inputs.student_logits.float() / t, dim=-1)
        log_p = F.log_softmax(_teacher_logits(inputs, "reverse_kl").float() / t, dim=-1)
        return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t


class JSDLoss(TemperedLoss):
    """Generalised Jensen–Shannon: T² · [β·KL(p ‖ m) + (1 − β)·KL(q ‖ m)], batch mean.

    p = softmax(t/T) (teacher), q = softmax(s/T) (student), m = β·p + (1 − β)·q, 0 ≤ β ≤ 1.
    β = 0.5 is the symmetric JSD (bounded by log 2 per row before the T² factor). The endpoints
    are the two KLs exactly, as in GKD (Agarwal et al., 2024): β = 0 is the forward
    T²·KL(p ‖ q) (`KLLoss`), β = 1 the reverse T²·KL(q ‖ p) (`ReverseKLLoss`). In between the
    mixture form vanishes towards both ends (≈ β·KL(p ‖ q) as β → 0, ≈ (1 − β)·KL(q ‖ p) as
    β → 1): its gradients point the way of the KL it nears, at a smaller scale.
    """

    def __init__(self, temperature: float, beta: float = 0.5) -> None:
        super().__init__()
        if not 0 <= beta <= 1:
            raise ValueError(f"jsd: beta must be between 0 and 1, got {beta}")
        self.temperature = temperature
        self.beta = beta

    def forward(self, inputs: LossInputs) -> Tensor:
        t, beta = self.temperature, self.beta
        log_q = F.log_softmax(inputs.student_logits.float() / t, dim=-1)
        log_p = F.log_softmax(_teacher_logits(inputs, "jsd").float() / t, dim=-1)
        if beta == 0:
            return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * t * t
        if beta == 1:
            return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta),
                                             log_q + math.log(1 - beta)]), dim=0)
        to_teacher = F.kl_div(log_m, log_p, log_target=True, reduction="batchmean")
        to_student = F.kl_div(log_m, log_q, log_target=True, reduction="batchmean")
        return (beta * to_teacher + (1 - beta) * to_student) * t * t


class CELoss(nn.Module):
    """Hard-label loss: −(1/N) Σ_n log softmax(s_n)[y_n] (rows labelled −100 are ignored)."""

    def forward(self, inputs: LossInputs) -> Tensor:
        if inputs.labels is None:
            raise ValueError("the ce loss needs labels")
        if not bool((inputs.labels != -100).any()):
            # A batch of transfer or augmented texts only: nothing to score (PyTorch's mean over
            # no rows is NaN), and a zero that keeps the graph lets the other terms train.
            return inputs.student_logits.sum() * 0.0
        return F.cross_entropy(inputs.student_logits.float(), inputs.labels, ignore_index=-100)


def logit_margins(logits: Tensor) -> Tensor:
    """m_i = z_i − mean_{j≠i} z_j for each class i (for two classes: the plain difference)."""
    c = logits.shape[-1]
    others = (logits.sum(dim=-1, keepdim=True) - logits) / (c - 1)
    return logits - others


class LogitMarginLoss(TemperedLoss):
    """Margin agreement: (1/N) Σ_n Σ_i λ_i · T² · log(1 + exp(−s_i · t_i)).

    s_i = m_i(student)/T and t_i = m_i(teacher)/T are the logit margins (see `logit_margins`)
    scaled by the temperature; λ_i weighs class i (default 1). The design notes print the term
    with a leading minus, which would reward the student for *disagreeing* with the teacher; we
    minimise this agreeing form, which is small when every margin has the teacher's sign and is
    large. log(1 + exp(x)) is computed as softplus(x) for numerical stability.
    """

    class_weights: Tensor | None

    def __init__(self, temperature: float, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        weights = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, inputs: LossInputs) -> Tensor:
        t = self.temperature
        s_margin = logit_margins(inputs.student_logits.float()) / t
        t_margin = logit_margins(_teacher_logits(inputs, "logit").float()) / t
        per_class = F.softplus(-s_margin * t_margin) * t * t
        if self.class_weights is not None:
            if self.class_weights.numel() != per_class.shape[-1]:
                raise ValueError(
                    f"logit loss: {self.class_weights.numel()} class weights for "
                    f"{per_class.shape[-1]} classes"
                )
            per_class = per_class * self.class_weights
        return per_class.sum(dim=-1).mean()


class MSELogitsLoss(nn.Module):
    """(1/(N·C)) Σ_n Σ_c (s_nc − t_nc)²: regression of the student's logits on the teacher's."""

    def forward(self, inputs: LossInputs) -> Tensor:
        return F.mse_loss(inputs.student_logits.float(),
                          _teacher_logits(inputs, "mse_logits").float())


class HiddenMSELoss(nn.Module):
    """(1/|M|) Σ_{(i→j)∈M} Σ_{real tokens} ‖W_i h_s^{(i)} − h_t^{(j)}‖² / (#tokens · D_t).

    M is the layer map {student layer i: teacher layer j}; W_i a learned projection when the
    widths differ (trained with the student), identity otherwise. Padding positions are masked.
    """

    def __init__(self, layer_map: Mapping[int, int], student_width: int, teacher_width: int):
        super().__init__()
        self.layer_map = dict(layer_map)
        self.projections = nn.ModuleDict(
            {str(i): _projection(student_width, teacher_width) for i in self.layer_map}
        )

    def forward(self, inputs: LossInputs) -> Tensor:
        student = _require(inputs.student_hidden, "hidden states")
        teacher = _require(inputs.teacher_hidden, "hidden states")
        total = student[0].new_zeros((), dtype=torch.float32)
        for i, j in self.layer_map.items():
            s = self.projections[str(i)](student[i + 1].float())
            t = teacher[j + 1].detach().float()  # a fixed target, as its logits are
            mask = _token_mask(t, inputs.attention_mask)
            squared = ((s - t) ** 2 * mask).sum()
            total = total + squared / (mask.sum() * t.shape[-1]).clamp_min(1.0)
        return total / len(self.layer_map)

    def teacher_hidden_states(self, teacher_layers: int) -> set[int]:
        """The indices of the teacher's `hidden_states` this term reads: j + 1 for each layer j."""
        return {j + 1 for j in self.layer_map.values()}


class AttentionMSELoss(nn.Module):
    """(1/|M|) Σ_{(i→j)∈M} mean over real (query, key) pairs of (A_s^{(i)} − A_t^{(j)})².

    A are attention probability maps (B, H, L, L). With equal head counts heads are compared one
    to one; otherwise both sides are first averaged over heads. Padded queries and keys are masked.
    """

    def __init__(self, layer_map: Mapping[int, int]) -> None:
        super().__init__()
        self.layer_map = dict(layer_map)

    def forward(self, inputs: LossInputs) -> Tensor:
        student = _require(inputs.student_attentions, "attention maps")
        teacher = _require(inputs.teacher_attentions, "attention maps")
        total = student[0].new_zeros((), dtype=torch.float32)
        for i, j in self.layer_map.items():
            s, t = student[i].float(), teacher[j].detach().float()
            if s.shape[1] != t.shape[1]:
                s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
            if inputs.attention_mask is None:
                pairs = torch.ones_like(s[:, :1])
            else:
                m = inputs.attention_mask.to(s.dtype)
                pairs = (m[:, :, None] * m[:, None, :]).unsqueeze(1)  # (B, 1, L, L)
            squared = ((s - t) ** 2 * pairs).sum()
            total = total + squared / (pairs.sum() * s.shape[1]).clamp_min(1.0)
        return total / len(self.layer_map)


class CosineLoss(nn.Module):
    """(1/N) Σ_n (1 − cos(W·pool(h_s), pool(h_t))) on the last hidden state.

    pool is the first ([CLS]) token or the masked mean over real tokens; W a learned projection
    when the widths differ.
    """

    def __init__(self, student_width: int, teacher_width: int, pooling: str = "cls") -> None:
        super().__init__()
        self.pooling = pooling
        self.projection = _projection(student_width, teacher_width)

    def _pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = _token_mask(hidden, mask)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def forward(self, inputs: LossInputs) -> Tensor:
        s = self._pool(_require(inputs.student_hidden, "hidden states")[-1].float(),
                       inputs.attention_mask)
        t = self._pool(_require(inputs.teacher_hidden, "hidden states")[-1].detach().float(),
                       inputs.attention_mask)
        return (1.0 - F.cosine_similarity(self.projection(s), t, dim=-1)).mean()

    def teacher_hidden_states(self, teacher_layers: int) -> set[int]:
        """The last hidden state: index `teacher_layers` (index 0 holds the embeddings)."""
        return {teacher_layers}


class CompositeLoss(nn.Module):
    """Σ_k w_k · L_k over the configured terms; also hands back each term's value for logging.

    Weights and the temperature may follow schedules over training: `set_progress(fraction)`
    (0 at the first optimizer step, 1 at the last) moves them, and `forward(inputs, progress=...)`
    does the same before computing. `TemperedLoss` terms get the scheduled temperature.
    """

    def __init__(
        self,
        terms: Sequence[tuple[str, float | Schedule, nn.Module]],
        temperature: Schedule | None = None,
    ) -> None:
        super().__init__()
        self.names = [name for name, _, _ in terms]
        self.schedules = [w if isinstance(w, Schedule) else Schedule(w) for _, w, _ in terms]
        self.terms = nn.ModuleList([module for _, _, module in terms])
        self.temperature = temperature
        self.progress = 0.0
        self.set_progress(0.0)

    @property
    def weights(self) -> list[float]:
        """Each term's weight at the current progress."""
        return [schedule.at(self.progress) for schedule in self.schedules]

    def set_progress(self, fraction: float) -> None:
        """Move the scheduled weights and temperature to `fraction` of training (0 to 1)."""
        self.progress = min(1.0, max(0.0, fraction))
        if self.temperature is not None:
            value = self.temperature.at(self.progress)
            for module in self.terms:
                if isinstance(module, TemperedLoss):
                    module.temperature = value

    @property
    def needs_hidden_states(self) -> bool:
        return any(isinstance(m, (HiddenMSELoss, CosineLoss)) for m in self.terms)

    def teacher_hidden_states(self, teacher_layers: int) -> tuple[int, ...]:
        """The indices of the teacher's `hidden_states` the terms read, ascending (0: the
        embeddings, i + 1: layer i, of a teacher of `teacher_layers` layers)."""
        read: set[int] = set()
        for module in self.terms:
            if isinstance(module, (HiddenMSELoss, CosineLoss)):
                read |= module.teacher_hidden_states(teacher_layers)
        return tuple(sorted(read))

    @property
    def needs_attentions(self) -> bool:
        return any(isinstance(m, AttentionMSELoss) for m in self.terms)

    def forward(
        self, inputs: LossInputs, progress: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        if progress is not None:
            self.set_progress(progress)
        total: Tensor | None = None
        values: dict[str, float] = {}
        for name, weight, module in zip(self.names, self.weights, self.terms, strict=True):
            value = module(inputs)
            values[name] = float(value.detach())
            total = value * weight if total is None else total + value * weight
        assert total is not None
        return total, values


def _term(
    spec: LossSpec, temperature: float, student: ShapeInfo, teacher: ShapeInfo
) -> nn.Module:
    layer_map = ({int(i): int(j) for i, j in spec.layer_map.items()} if spec.layer_map
                 else dict(enumerate(even_spread(student.num_layers, teacher.num_layers))))
    if spec.type == "kl":
        return KLLoss(temperature)
    if spec.type == "reverse_kl":
        return ReverseKLLoss(temperature)
    if spec.type == "jsd":
        return JSDLoss(temperature, spec.beta)
    if spec.type == "ce":
        return CELoss()
    if spec.type == "logit":
        return LogitMarginLoss(temperature, spec.class_weights)
    if spec.type == "mse_logits":
        return MSELogitsLoss()
    if spec.type == "hidden_mse":
        return HiddenMSELoss(layer_map, student.hidden_size, teacher.hidden_size)
    if spec.type == "attention_mse":
        return AttentionMSELoss(layer_map)
    if spec.type == "cosine":
        return CosineLoss(student.hidden_size, teacher.hidden_size, pooling=spec.pooling)
    raise ValueError(f"unknown loss {spec.type!r}")


def build_losses(
    specs: Sequence[LossSpec | Mapping[str, Any]],
    temperature: float,
    student_info: ShapeInfo,
    teacher_info: ShapeInfo,
    temperature_end: float | None = None,
) -> CompositeLoss:
    """The weighted sum of the configured terms; ValueError naming the field when one is wrong.

    `temperature_end` and each spec's `weight_end` make those values linear schedules.
    """
    problems = check_losses(specs, temperature, student_layers=student_info.num_layers,
                            teacher_layers=teacher_info.num_layers,
                            temperature_end=temperature_end)
    if problems:
        raise ValueError("; ".join(message for _, message in problems))
    terms: list[tuple[str, float | Schedule, nn.Module]] = []
    counts: dict[str, int] = {}
    for raw in specs:
        spec = as_spec(raw)
        counts[spec.type] = counts.get(spec.type, 0) + 1
        name = spec.type if counts[spec.type] == 1 else f"{spec.type}_{counts[spec.type]}"
        terms.append((name, Schedule(spec.weight, spec.weight_end),
                      _term(spec, temperature, student_info, teacher_info)))
    return CompositeLoss(terms, Schedule(temperature, temperature_end))
