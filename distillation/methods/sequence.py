"""Sequence-level distillation (`method` "sequence"; Kim & Rush, 2016): the student learns the
teacher's own answers.

The teacher answers every training prompt once, in the `generate` stage (`teacher_answers`:
batched with the KV cache, greedy unless `generation.temperature` is above 0, stored as it
goes and resumed after a crash), and the examples become prompt + the teacher's answer. Then
the distill stage is token-level distillation on those answers, on the teacher's logits: the
student imitates both what the teacher says (its answers as the labels) and how sure it is
at every token (its distributions), and the teacher cache serves it as it serves any
token-level job. `generation.num_samples` sampled answers per prompt make as many examples.
"""

from __future__ import annotations

from typing import ClassVar

from distillation.config import JobConfig
from distillation.methods.base import Method


class SequenceMethod(Method):
    name: ClassVar[str] = "sequence"
    every_prompt: ClassVar[bool] = True

    def description(self, config: JobConfig) -> str:
        return "sequence-level distillation on the teacher's answers and its logits"
