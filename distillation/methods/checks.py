"""Checks of a job's method settings that need no model: the API runs them at job creation and
the engine again (torch-free, so the web process imports them cheaply). Each problem names the
request field, as the API spells it (`distillation.method`, `distillation.lambda`, ...)."""

from __future__ import annotations

import math
from typing import Any

from distillation.config import METHODS, GenerationSpec, OnPolicySpec

GENERATIVE_TASKS = ("causal-lm",)  # the tasks whose examples have a prompt and an answer
MAX_NEW_TOKENS = 2048
MAX_SAMPLES = 16

Problems = list[tuple[str, str]]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_generation(spec: GenerationSpec) -> Problems:
    """Problems with the `generation` settings."""
    problems: Problems = []
    if not (isinstance(spec.max_new_tokens, int) and 1 <= spec.max_new_tokens <= MAX_NEW_TOKENS):
        problems.append(("generation.max_new_tokens", "generation.max_new_tokens must be a whole "
                         f"number from 1 to {MAX_NEW_TOKENS}, got {spec.max_new_tokens}"))
    if not (_number(spec.temperature) and spec.temperature >= 0):
        problems.append(("generation.temperature", "generation.temperature must be 0 (greedy) or "
                         f"a positive number, got {spec.temperature}"))
    if not (_number(spec.top_p) and 0 < spec.top_p <= 1):
        problems.append(("generation.top_p", "generation.top_p must be above 0 and at most 1, "
                         f"got {spec.top_p}"))
    if not (isinstance(spec.num_samples, int) and 1 <= spec.num_samples <= MAX_SAMPLES):
        problems.append(("generation.num_samples", "generation.num_samples must be a whole number "
                         f"from 1 to {MAX_SAMPLES}, got {spec.num_samples}"))
    elif spec.num_samples > 1 and _number(spec.temperature) and spec.temperature == 0:
        problems.append(("generation.num_samples", "generation.num_samples above 1 needs "
                         "generation.temperature above 0: greedy answers to one prompt are all "
                         "the same"))
    return problems


def check_method(*, task: str, method: str, on_policy: OnPolicySpec,
                 generation: GenerationSpec, devices: int = 1) -> Problems:
    """Every problem with a job's method and its settings; empty when they are usable."""
    if method not in METHODS:
        return [("distillation.method", f"distillation.method must be one of "
                 f"{', '.join(METHODS)}, got {method!r}")]
    problems = check_generation(generation)
    if method != "token" and task not in GENERATIVE_TASKS:
        problems.append(("distillation.method", f"distillation.method {method!r} distils what a "
                         f"model generates, for {' and '.join(GENERATIVE_TASKS)} jobs; a {task} "
                         "job uses \"token\""))
    if method != "on-policy":
        return problems
    for name, value in (("lambda", on_policy.lambda_), ("beta", on_policy.beta)):
        if not (_number(value) and 0 <= value <= 1):
            problems.append((f"distillation.{name}",
                             f"distillation.{name} must be between 0 and 1, got {value}"))
    if devices > 1:
        problems.append(("hyperparameters.devices", "on-policy distillation trains on one device: "
                         "the student samples its answers between optimizer steps, which "
                         "several devices (DDP) would have to do in step; set "
                         "hyperparameters.devices to 1"))
    return problems
