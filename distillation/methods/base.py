"""What a method is, as the engine sees it, and the default one: token-level distillation on the
answers in the file (`method` "token").

The engine asks the job's `Method` at four points: `check` (before anything loads), `prepare`
(the `generate` stage, once the teacher is loaded: whose answers the examples hold), `losses`
(what the student minimises) and `training` (what the distill stage changes: a hook that
prepares each batch, how the accumulation group is weighted, whether the teacher cache may
serve); `summary` is its section of the report. A method is one module here and one entry in
`registry`.

Every method has the teacher answer the prompts that came without an answer (the contract of
the causal-LM features: `len(input_ids) == prompt_length`); "sequence" has it answer every
prompt (`teacher_answers`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from distillation.config import JobConfig, Reporter
from distillation.losses.functions import CompositeLoss, build_losses
from distillation.methods.checks import check_method
from distillation.methods.teacher_answers import AnswerStats, answer_prompts
from distillation.tasks import Task, TaskData, get_task
from distillation.training.loop import BatchHook


@dataclass
class TrainingHooks:
    """What a method changes in the distill stage (`loop.fit`'s arguments of the same names)."""

    prepare_batch: BatchHook | None = None
    loss_rows: Callable[[dict[str, Tensor]], int] | None = None
    # Why the teacher cache must not serve this method (None: it may).
    no_cache: str | None = None


class Method:
    """Token-level distillation on the answers the examples hold (see the module notes)."""

    name: ClassVar[str] = "token"
    # The teacher answers every training prompt, not only those without an answer.
    every_prompt: ClassVar[bool] = False

    def __init__(self) -> None:
        self.teacher_answers: AnswerStats | None = None

    def check(self, config: JobConfig) -> None:
        """ValueError naming the field when the job's method settings cannot work."""
        problems = check_method(task=config.task, method=self.name, on_policy=config.on_policy,
                                generation=config.generation,
                                devices=config.hyperparameters.devices)
        if problems:
            raise ValueError("; ".join(message for _, message in problems))

    def prepare(self, config: JobConfig, data: TaskData, teacher: nn.Module, *,
                device: torch.device, reporter: Reporter) -> TaskData:
        """The `generate` stage: the data with the teacher's answers where the method wants
        them (unchanged when it wants none)."""
        data, self.teacher_answers = answer_prompts(
            config, data, teacher, every_prompt=self.every_prompt, device=device,
            reporter=reporter)
        return data

    def losses(self, config: JobConfig, task: Task, student: PreTrainedModel,
               teacher: PreTrainedModel) -> CompositeLoss:
        """The job's loss terms (`distillation.losses`)."""
        return build_losses(task.loss_specs(config.losses), config.temperature,
                            task.loss_shape(student.config), task.loss_shape(teacher.config),
                            temperature_end=config.temperature_end)

    def training(self, config: JobConfig, data: TaskData, student: nn.Module,
                 device: torch.device) -> TrainingHooks:
        return TrainingHooks()

    def description(self, config: JobConfig) -> str:
        """What the student learns from, said when the distill stage starts."""
        if get_task(config.task).labelled:
            return "learning the teacher's class probabilities on every example"
        return "token-level distillation on the examples' answers"

    def metrics(self) -> dict[str, float]:
        """What the method adds to each epoch's metrics (cumulative, this attempt)."""
        return {}

    def finished(self, reporter: Reporter) -> None:
        """Said once the distill stage has trained."""

    def summary(self, config: JobConfig) -> dict[str, Any]:
        """The report's `method` section."""
        return {"name": self.name,
                "teacher_answers": (self.teacher_answers.summary()
                                    if self.teacher_answers is not None else None)}
