"""Task name → everything about the task (its `Task`): the one table the engine, the predictor,
the model card and the API's validation read. Adding a task is a module and a line here."""

from __future__ import annotations

from distillation.tasks.base import Task
from distillation.tasks.causal_lm import CausalLMTask
from distillation.tasks.classification import ClassificationTask
from distillation.tasks.seq2seq import Seq2SeqTask

TASKS: dict[str, Task] = {task.name: task for task in (
    ClassificationTask(),
    CausalLMTask(),
    Seq2SeqTask(),
)}


def get_task(name: str) -> Task:
    """The task called `name`; ValueError naming the supported ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task {name!r} is not supported yet; "
                         f"supported: {', '.join(TASKS)}") from None


def tasks_with_head(head: str) -> tuple[str, ...]:
    """The tasks whose models predict through `head` ("classify" or "generate")."""
    return tuple(name for name, task in TASKS.items() if task.head == head)
