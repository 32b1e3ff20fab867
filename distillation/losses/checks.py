"""Checks of a job's loss settings that need no model: the API runs them at job creation.

Pure Python (no torch), so the web process can import them cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from distillation.config import LOSS_TYPES, LossSpec
from distillation.losses.layer_map import check_layer_map

LAYER_LOSSES = ("hidden_mse", "attention_mse")
POOLINGS = ("cls", "mean")


def as_spec(spec: LossSpec | Mapping[str, Any]) -> LossSpec:
    return spec if isinstance(spec, LossSpec) else LossSpec(**dict(spec))


def check_losses(
    specs: Sequence[LossSpec | Mapping[str, Any]],
    temperature: float,
    *,
    student_layers: int,
    teacher_layers: int,
    temperature_end: float | None = None,
) -> list[tuple[str, str]]:
    """Every problem with a loss configuration, as (param, message); empty when it is usable."""
    problems: list[tuple[str, str]] = []
    temperatures = {"temperature": temperature}
    if temperature_end is not None:
        temperatures["temperature_end"] = temperature_end
    for name, value in temperatures.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            problems.append((f"distillation.{name}",
                             f"distillation.{name} must be a positive number, got {value}"))
    if not specs:
        problems.append(("distillation.losses", "distillation.losses must name at least one loss"))
    total_weight = 0.0
    for k, raw in enumerate(specs):
        where = f"distillation.losses[{k}]"
        try:
            spec = as_spec(raw)
        except TypeError as exc:
            problems.append((where, f"{where}: {exc}"))
            continue
        if spec.type not in LOSS_TYPES:
            problems.append((f"{where}.type", f"{where}.type: unknown loss {spec.type!r}; "
                             f"choose one of {', '.join(LOSS_TYPES)}"))
        if not math.isfinite(spec.weight) or spec.weight < 0:
            problems.append((f"{where}.weight",
                             f"{where}.weight must be a non-negative number, got {spec.weight}"))
        else:
            total_weight += spec.weight
        if spec.weight_end is not None:
            if not math.isfinite(spec.weight_end) or spec.weight_end < 0:
                problems.append((f"{where}.weight_end", f"{where}.weight_end must be a "
                                 f"non-negative number, got {spec.weight_end}"))
            else:
                total_weight += spec.weight_end
        if not (isinstance(spec.beta, (int, float)) and 0 < spec.beta < 1):
            problems.append((f"{where}.beta",
                             f"{where}.beta must be strictly between 0 and 1, got {spec.beta}"))
        if spec.layer_map is not None:
            if spec.type not in LAYER_LOSSES:
                problems.append((f"{where}.layer_map", f"{where}.layer_map only applies to "
                                 f"{' and '.join(LAYER_LOSSES)}, not {spec.type}"))
            else:
                problems += check_layer_map(spec.layer_map, f"{where}.layer_map",
                                            student_layers=student_layers,
                                            teacher_layers=teacher_layers)
        if spec.class_weights is not None and (
            spec.type != "logit" or any(not math.isfinite(w) or w < 0 for w in spec.class_weights)
        ):
            problems.append((f"{where}.class_weights", f"{where}.class_weights: non-negative "
                             "weights, one per class, for the logit loss only"))
        if spec.type == "cosine" and spec.pooling not in POOLINGS:
            problems.append((f"{where}.pooling", f"{where}.pooling must be one of "
                             f"{', '.join(POOLINGS)}, got {spec.pooling!r}"))
    if specs and total_weight == 0 and not problems:
        problems.append(("distillation.losses", "distillation.losses: all weights are zero"))
    return problems
