"""The rules a job's plan must meet with its models, each stated once: the API checks a request's
plan at job creation (from the models' configs and tokenizers, nothing loaded) and
`engine.run_job` checks the same plan again before it loads anything (`check_config`), so a job
the API accepted and a config built by hand meet the same rules.

Rules that need the job's records (columns, labels, the reach of a target) stay with the data
(`tasks`, `data.checks`, `students.sizing`); ranges of single fields are the API schema's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distillation.config import JobConfig
from distillation.data.augment import check_augmentation
from distillation.data.vocab import Vocabulary, read_vocabulary
from distillation.losses.checks import check_losses
from distillation.methods.checks import check_method
from distillation.models.info import (
    BASE_TASK,
    CAUSAL_LM,
    CLASSIFICATION,
    ModelInfo,
    inspect_model,
)
from distillation.plan import JobPlan, plan_of
from distillation.students.build import check_architecture
from distillation.students.prune import pruning_problems
from distillation.tasks import TASKS, Task, get_task

METHODS = ("token", "sequence", "on-policy")
# The teacher writes new prompts in the style of example records: chat or prompt records.
DATA_GENERATION_TASKS = (CAUSAL_LM,)
MIN_GENERATION_EXAMPLES = 5


@dataclass(frozen=True)
class Problem:
    """What is wrong, naming the request field; `code` is the API's error code."""

    param: str
    message: str
    code: str


@dataclass(frozen=True)
class Model:
    """What the checks read of one model: its config, and its vocabulary when a rule asks."""

    info: ModelInfo
    vocabulary: Callable[[], Vocabulary]


def task_problem(name: str) -> Problem | None:
    """An unknown task (the other rules need a known one)."""
    if name in TASKS:
        return None
    return Problem("task", f"Unknown task {name!r}; supported: {', '.join(TASKS)}.",
                   "unsupported_task")


def job_problems(plan: JobPlan, teacher: Model, student: Model | None, *,
                 transfer_file: bool) -> list[Problem]:
    """The problems of the first rule the job breaks, in the order the API reports them
    (empty: none). `student` is the `student.model`'s, None for a student built here."""
    unknown = task_problem(plan.task)
    if unknown is not None:
        return [unknown]
    task = get_task(plan.task)
    for problems in (
        lambda: _teacher(plan, task, teacher.info),
        lambda: _options(plan, task, transfer_file=transfer_file),
        lambda: _quantization(plan, task),
        lambda: _student(plan, teacher.info),
        lambda: _losses(plan, teacher.info, student.info if student is not None else None),
        lambda: _pair(plan, task, teacher, student),
        lambda: _pruning(plan, task, teacher, student),
    ):
        found = problems()
        if found:
            return found
    return []


def check_config(config: JobConfig, teacher: ModelInfo | None = None) -> None:
    """`job_problems` on a config, its models read from their folders: ValueError naming the
    problems (the engine's side)."""
    def model(path: Path, info: ModelInfo | None = None) -> Model:
        return Model(info or inspect_model(path), lambda: read_vocabulary(path))

    student_dir = config.student.model_path
    problems = job_problems(plan_of(config), model(config.teacher_path, teacher),
                            model(student_dir) if student_dir is not None else None,
                            transfer_file=config.transfer_file is not None)
    if problems:
        raise ValueError("; ".join(problem.message for problem in problems))


def _teacher(plan: JobPlan, task: Task, teacher: ModelInfo) -> list[Problem]:
    """A teacher for the task: a model with its head, or a base model fine-tuned first."""
    if teacher.task == BASE_TASK and plan.teacher_finetune is None:
        return [Problem(
            "teacher.finetune",
            f"Teacher {plan.teacher_name!r} is a base model with no {task.name} head: add "
            '"teacher": {"finetune": {"epochs": 1}} to fine-tune it on the training file first.',
            "teacher_needs_finetune")]
    if teacher.task not in (BASE_TASK, task.name):
        return [Problem("teacher.model", f"Teacher {plan.teacher_name!r} is a {teacher.task} "
                        f"model, not {task.name}.", "wrong_model_task")]
    return []


def _options(plan: JobPlan, task: Task, *, transfer_file: bool) -> list[Problem]:
    """Options only some tasks take: extra texts for the teacher to label (classification),
    methods that generate answers (language models), teacher-written prompts (causal LM)."""
    for param, given in (("transfer_file", transfer_file),
                         ("augmentation", plan.augmentation is not None)):
        if given and not task.transfer_data:
            return [Problem(param, f"{param} is for sequence-classification jobs (the teacher "
                            "labels the extra texts with its class probabilities); a "
                            f"{task.name} job learns from the training file's texts.",
                            "unsupported_option")]
    if plan.augmentation is not None:
        problems = check_augmentation(plan.augmentation.methods, plan.augmentation.multiplier)
        if problems:
            return [Problem(param, message, "invalid_augmentation") for param, message in problems]
    problems = check_method(task=task.name, method=plan.method, on_policy=plan.on_policy,
                            generation=plan.generation, devices=plan.hyperparameters.devices)
    if problems:
        return [Problem(param, message, "unsupported_option") for param, message in problems]
    if plan.data_generation is not None and task.name not in DATA_GENERATION_TASKS:
        return [Problem("data_generation", "data_generation is for "
                        f"{', '.join(DATA_GENERATION_TASKS)} jobs (the teacher writes prompts and "
                        f"answers them); a {task.name} job learns from the training file.",
                        "unsupported_option")]
    return []


def _quantization(plan: JobPlan, task: Task) -> list[Problem]:
    """Quantisation-aware distillation trains for the int8 ONNX export, which only
    classifiers get."""
    if plan.hyperparameters.quantization_aware > 0 and task.name != CLASSIFICATION:
        return [Problem("hyperparameters.quantization_aware",
                        "hyperparameters.quantization_aware is for sequence-classification jobs "
                        "(it trains the student for its int8 ONNX export); a "
                        f"{task.name} student runs in torch only: leave it at 0.",
                        "unsupported_option")]
    return []


def _student(plan: JobPlan, teacher: ModelInfo) -> list[Problem]:
    """A student sized to a target (every task can), or an architecture that fits."""
    spec = plan.student
    if spec.target is not None:
        if any(loss.layer_map for loss in plan.losses):
            return [Problem("student.target", "distillation.losses[].layer_map needs a student "
                            "of a known depth: give student.architecture, or leave layer_map out "
                            "(layers are then evenly spread).", "invalid_loss")]
        return []
    if spec.architecture is not None:
        return [Problem(param, message, "invalid_architecture")
                for param, message in check_architecture(spec.architecture, teacher)]
    return []


def _losses(plan: JobPlan, teacher: ModelInfo, student: ModelInfo | None) -> list[Problem]:
    if student is not None:
        student_layers = student.num_layers
    elif plan.student.target is not None:
        student_layers = 1  # layer losses spread the student's layers over the teacher's
    else:
        student_layers = (plan.student.architecture or {}).get("num_layers", teacher.num_layers)
    return [Problem(param, message, "invalid_loss") for param, message in check_losses(
        plan.losses, plan.temperature, temperature_end=plan.temperature_end,
        student_layers=student_layers, teacher_layers=teacher.num_layers)]


def _pair(plan: JobPlan, task: Task, teacher: Model, student: Model | None) -> list[Problem]:
    """The teacher and the student can be distilled together with these losses: one kind and
    one vocabulary for token-level tasks; hidden states to compare for layer losses."""
    teacher_vocab = student_vocab = None
    if student is not None:
        teacher_vocab = teacher.vocabulary().fingerprint
        student_vocab = student.vocabulary().fingerprint
    student_info = student.info if student is not None else None
    problems = task.check_pair(teacher.info, student_info, teacher_vocab=teacher_vocab,
                               student_vocab=student_vocab)
    problems += task.check_pair_losses(
        plan.losses, teacher.info, student_info,
        same_tokenizer=not (teacher_vocab and student_vocab and teacher_vocab != student_vocab))
    codes = {"student.model": "incompatible_student", "teacher.model": "incompatible_teacher"}
    return [Problem(param, message, codes.get(param, "invalid_loss"))
            for param, message in problems]


def _pruning(plan: JobPlan, task: Task, teacher: Model, student: Model | None) -> list[Problem]:
    if not plan.student.prune_vocabulary:
        return []
    return [Problem(param, message, "vocabulary_not_prunable")
            for param, message in pruning_problems(
                task, teacher.vocabulary(),
                student.vocabulary() if student is not None else None)]
