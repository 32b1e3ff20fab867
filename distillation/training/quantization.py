"""Quantisation-aware distillation (QAD): the student learns, for the last share of its optimizer
steps, through the int8 arithmetic its ONNX int8 export will run.

ONNX Runtime's `quantize_dynamic` (`export.onnx_export`; its pre-processing turns the head's
Gemms into MatMuls) rounds, in an exported BERT-like classifier:
- every MatMul whose second input is a weight, i.e. every `nn.Linear` (attention projections,
  feed-forward, pooler, head), into a MatMulInteger: the weight symmetric int8 per output channel
  on 7 bits (-64..64, zero point 0: the export's `reduce_range`, see `REDUCE_RANGE` there), the
  input asymmetric uint8 per tensor with the
  range of the tensor it is given at run time (`DynamicQuantizeLinear`: [min(x, 0), max(x, 0)]
  over 255 steps);
- every Gather of a weight, i.e. every `nn.Embedding` (words, positions, segments): the table
  asymmetric uint8 per tensor, as an activation (`GatherQuant`), dequantised after the lookup.
The attention's activation-by-activation products, norms and softmax stay fp32. `FakeQuant` makes
those modules compute with exactly those rounded values in fp32 (`torch.fake_quantize_*`:
straight-through gradients), so the distillation loss, with the teacher's soft targets, sees and
corrects the rounding error, as NVIDIA ModelOpt's QAD and Intel Neural Compressor's distillation
for quantisation do.

The modules' own `forward` is shadowed by an instance attribute while QAD is on and the attribute
is deleted when it is off: no parameter, buffer or state-dict key changes, so checkpoints, the
best-epoch file and the saved model hold the plain fp32 weights, and switching off restores the
exact fp32 outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn import functional

from distillation.training.schedules import step_progress

# Symmetric int8 weights on 7 bits (-64..64), as ONNX Runtime's QInt8 with `reduce_range`: with
# these, the fake-quantised model's logits are ONNX Runtime's int8 logits to within float error.
WEIGHT_QMAX = 64
ACTIVATION_QMAX = 255  # asymmetric uint8, as DynamicQuantizeLinear


def fake_quant_weight(weight: Tensor, *, per_channel: bool = True) -> Tensor:
    """`weight` ([out, in]) rounded to symmetric int8 (-64..64), one scale per output row (per
    channel) or one for the whole tensor; straight-through gradient."""
    absmax = weight.detach().abs().amax(dim=1) if per_channel else weight.detach().abs().amax()
    scale = (absmax / WEIGHT_QMAX).clamp(min=1e-12).float()
    if per_channel:
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -WEIGHT_QMAX,
                                                      WEIGHT_QMAX)
    return torch.fake_quantize_per_tensor_affine(weight, scale.reshape(1),
                                                 torch.zeros(1, dtype=torch.int32,
                                                             device=weight.device),
                                                 -WEIGHT_QMAX, WEIGHT_QMAX)


def fake_quant_activation(x: Tensor) -> Tensor:
    """`x` rounded as `DynamicQuantizeLinear` does: uint8 over [min(x, 0), max(x, 0)] of this
    tensor, zero exactly representable; straight-through gradient."""
    low = x.detach().min().clamp(max=0.0).float()
    high = x.detach().max().clamp(min=0.0).float()
    scale = ((high - low) / ACTIVATION_QMAX).clamp(min=1e-12)
    zero = torch.round(-low / scale).clamp(0, ACTIVATION_QMAX).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zero.reshape(1), 0,
                                                 ACTIVATION_QMAX)


def _int8_forward(self: nn.Linear, x: Tensor, *, per_channel: bool) -> Tensor:
    # In fp32 whatever autocast does with the product: the rounding is the int8 export's.
    weight = fake_quant_weight(self.weight.float(), per_channel=per_channel)
    return functional.linear(fake_quant_activation(x.float()).to(x.dtype), weight.to(x.dtype),
                             self.bias)


def _uint8_lookup(self: nn.Embedding, ids: Tensor) -> Tensor:
    table = fake_quant_activation(self.weight.float()).to(self.weight.dtype)
    return functional.embedding(ids, table, self.padding_idx, self.max_norm, self.norm_type,
                                self.scale_grad_by_freq, self.sparse)


def quantized_modules(model: nn.Module) -> list[nn.Linear | nn.Embedding]:
    """The modules ONNX Runtime's dynamic quantisation rounds: every Linear (int8 MatMuls) and
    every Embedding (uint8 tables)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding)]


class FakeQuant:
    """Switches the fake-quantised forward of a model's Linears and Embeddings on and off."""

    def __init__(self, model: nn.Module, *, per_channel: bool = True) -> None:
        self.modules = quantized_modules(model)
        self.per_channel = per_channel
        self.on = False

    def enable(self) -> None:
        for module in self.modules:
            module.forward = (  # type: ignore[method-assign]
                partial(_int8_forward, module, per_channel=self.per_channel)
                if isinstance(module, nn.Linear) else partial(_uint8_lookup, module))
        self.on = True

    def disable(self) -> None:
        for module in self.modules:
            module.__dict__.pop("forward", None)  # back to the class's forward
        self.on = False

    def set(self, on: bool) -> None:
        if on != self.on:
            self.enable() if on else self.disable()


def qad_starts(share: float) -> float:
    """The training progress (0 first optimizer step, 1 last) from which QAD is on, for the last
    `share` of the steps."""
    return 1.0 - share


@dataclass
class QuantizationAware:
    """The `on_progress` hook of the distill stage: fake quantisation on for the last `share` of
    the optimizer steps, off before that (and off, by `pause`, while the student is evaluated:
    the student is evaluated, selected and exported with its fp32 weights; the int8 export is
    measured on its own)."""

    model: nn.Module
    share: float
    per_channel: bool = True

    def __post_init__(self) -> None:
        self.switch = FakeQuant(self.model, per_channel=self.per_channel)

    def __call__(self, fraction: float) -> None:
        on = self.share > 0 and fraction >= qad_starts(self.share) - 1e-9
        self.switch.set(on)

    def pause(self) -> None:
        """Plain fp32 forward until the next `__call__` (evaluation, export)."""
        self.switch.disable()

    def steps(self, total_steps: int) -> int:
        """How many of `total_steps` optimizer steps it is on for."""
        return self.steps_of(self.share, total_steps)

    @staticmethod
    def steps_of(share: float, total_steps: int) -> int:
        """How many of `total_steps` optimizer steps the last `share` is, as `__call__` counts."""
        return sum(share > 0 and step_progress(step, total_steps) >= qad_starts(share) - 1e-9
                   for step in range(total_steps))


@dataclass
class ProgressHooks:
    """Several `on_progress(fraction)` hooks called in turn (picklable when they are)."""

    hooks: Sequence[Callable[[float], None]]

    def __call__(self, fraction: float) -> None:
        for hook in self.hooks:
            hook(fraction)
