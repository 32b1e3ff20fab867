"""The tasks the core distils: one module per task, one registry (see `tasks.base` for what a
task answers, `tasks.registry` for the table)."""

from distillation.models.info import CAUSAL_LM, CLASSIFICATION, SEQ2SEQ
from distillation.tasks.base import Side, Task, TaskCard, TaskData
from distillation.tasks.registry import TASKS, get_task, tasks_with_head

__all__ = ["CAUSAL_LM", "CLASSIFICATION", "SEQ2SEQ", "TASKS", "Side", "Task", "TaskCard",
           "TaskData", "get_task", "tasks_with_head"]
