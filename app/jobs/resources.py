"""Routing by size: which queue's workers can hold a job, decided once at creation.

The service estimates the job's accelerator memory per device (`distillation.students.memory`, from the
models' configs: nothing is loaded), stores it on the job with the queue it chose, and every
wake-up of the job (the API's, a worker's hand-back, the reconciler's) goes to that queue. The
queue is the smallest configured class (`DISTILL_WORKER_QUEUES`, `app.jobs.queue_classes`) whose workers
have the memory and `hyperparameters.devices` devices; a job that no class could ever hold is
refused with a 400 naming the field to change, and one whose memory cannot be estimated (an
exotic config) goes only to a class without a memory limit, else is refused (400
`memory_estimate_failed`): it is never sent unchecked to the largest class. Workers consume every
class they are as big as (`queues_for_worker`), so a small job also runs on an idle large worker.

Capacity is the configuration's, not the live workers': a class with no worker running now still
takes jobs (they wait in its queue), and the registry (`app.workers`) shows who is up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transformers import PretrainedConfig

from app.jobs.validation import CheckedJob
from app.kit.errors import InvalidRequest
from app.settings import Settings
from distillation.models.loading import load_config
from distillation.students.build import sized_config
from distillation.students.memory import MemoryEstimate, estimate_memory, format_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What the job needs and where it goes."""

    estimate: MemoryEstimate | None  # None when the configs could not be sized (unbounded queue)
    queue: str
    devices: int

    @property
    def memory_bytes(self) -> int | None:
        return self.estimate.total if self.estimate is not None else None


def _student_config(checked: CheckedJob, teacher_config: PretrainedConfig) -> PretrainedConfig:
    """The student's config: its model's, the teacher's resized, or (for a target, whose shape
    is picked later) the teacher's own: a student is never bigger, so that is an upper bound."""
    if checked.student is not None:
        return load_config(checked.student.path)
    if checked.plan.student.architecture is not None:
        return sized_config(teacher_config, checked.plan.student.architecture)
    return teacher_config


def estimate_job(checked: CheckedJob) -> MemoryEstimate:
    """The job's memory per device (see `distillation.students.memory`)."""
    teacher_config = load_config(checked.teacher.path)
    plan = checked.plan
    hp = plan.hyperparameters
    finetune = plan.teacher_finetune
    return estimate_memory(
        teacher_config, _student_config(checked, teacher_config), task=plan.task,
        batch_size=hp.batch_size, max_length=plan.data.max_seq_length, devices=hp.devices,
        finetune_batch_size=(finetune.batch_size or hp.batch_size) if finetune else None)


def _too_big(estimate: MemoryEstimate, checked: CheckedJob) -> str:
    """The request field whose change shrinks the estimate most (its biggest part)."""
    spec = checked.plan.student
    student = ("student.model" if checked.student is not None else
               "student.architecture" if spec.architecture is not None else "student.target")
    if estimate.finetune > estimate.distill:
        return "teacher.finetune.batch_size"
    parts = {"hyperparameters.batch_size": estimate.activations,
             student: estimate.student_training, "teacher.model": estimate.teacher_weights}
    return max(parts, key=lambda name: parts[name])


def plan_resources(*, checked: CheckedJob, settings: Settings) -> Resources:
    """The job's estimate and queue; InvalidRequest when no configured class could hold it."""
    queues = settings.queue_classes
    devices = checked.plan.hyperparameters.devices
    most = max(q.devices for q in queues)
    if devices > most:
        raise InvalidRequest(
            f"hyperparameters.devices is {devices}, but the configured workers have at most "
            f"{most} device{'s' if most > 1 else ''} each (DISTILL_WORKER_QUEUES: "
            f"{', '.join(q.describe() for q in queues)}); lower hyperparameters.devices.",
            param="hyperparameters.devices", code="insufficient_devices")
    fitting = [q for q in queues if q.devices >= devices]
    try:
        estimate = estimate_job(checked)
    except Exception:
        # Fail closed: a job whose size is unknown goes only where size does not matter.
        log.warning("could not estimate the memory of a %s job", checked.plan.task,
                    exc_info=True)
        unbounded = [q for q in fitting if q.memory_bytes is None]
        if unbounded:
            return Resources(estimate=None, queue=unbounded[0].name, devices=devices)
        raise InvalidRequest(
            "Could not estimate this job's accelerator memory from the teacher's and the "
            "student's configs, and every configured worker class has a memory limit "
            f"(DISTILL_WORKER_QUEUES: {', '.join(q.describe() for q in fitting)}), so no "
            "worker can be chosen safely; use models whose config.json this service can size.",
            param="teacher.model", code="memory_estimate_failed") from None
    total = estimate.total
    for queue in fitting:
        if queue.holds(total, devices):
            return Resources(estimate=estimate, queue=queue.name, devices=devices)
    largest = max(q.memory_bytes or 0 for q in fitting)
    param = _too_big(estimate, checked)
    raise InvalidRequest(
        f"This job needs an estimated {format_bytes(estimate.total)} of accelerator memory per "
        f"device (teacher weights {format_bytes(estimate.teacher_weights)}, student weights, "
        f"gradients and AdamW state {format_bytes(estimate.student_training)}, activations "
        f"{format_bytes(estimate.activations)} for {estimate.batch_per_device} examples of "
        f"{estimate.max_length} tokens per device"
        + (f"; fine-tuning the teacher {format_bytes(estimate.finetune)}"
           if estimate.finetune else "")
        + f"), but the largest configured worker holds {format_bytes(largest)} per device. "
        f"Change {param} (or lower hyperparameters.batch_size or data.max_seq_length, or "
        "use a smaller student, or more hyperparameters.devices).",
        param=param, code="job_too_large")
