"""The wire format of distillation jobs (kept apart from the table)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from distillation.config import FINETUNE_LEARNING_RATE, FINETUNE_MIN_STEPS, DataSpec


class Strict(BaseModel):
    # Unknown fields are a typo more often than not: reject them, naming the field.
    model_config = ConfigDict(extra="forbid")


class FinetuneIn(Strict):
    epochs: int = Field(1, ge=1, le=20)
    learning_rate: float = Field(FINETUNE_LEARNING_RATE, gt=0, le=1)
    batch_size: int | None = Field(None, ge=1, le=1024)
    # A floor on optimizer steps: `epochs` is extended by whole epochs on a small file (0: none).
    min_steps: int = Field(FINETUNE_MIN_STEPS, ge=0, le=1_000_000)


class TeacherIn(Strict):
    model: str = Field(min_length=1, max_length=1024)
    finetune: FinetuneIn | None = None


class ArchitectureIn(Strict):
    num_layers: int | None = Field(None, ge=1, le=64)
    hidden_size: int | None = Field(None, ge=8, le=16384)
    num_heads: int | None = Field(None, ge=1, le=256)
    intermediate_size: int | None = Field(None, ge=8, le=65536)


class TargetIn(Strict):
    compression: float | None = Field(None, gt=1, le=1000)  # teacher parameters / student's
    max_latency_ms: float | None = Field(None, gt=0, le=600_000)  # CPU, batch 1

    @model_validator(mode="after")
    def _something(self) -> TargetIn:
        if self.compression is None and self.max_latency_ms is None:
            raise ValueError("give student.target.compression and/or max_latency_ms")
        return self


class StudentIn(Strict):
    model: str | None = Field(None, min_length=1, max_length=1024)
    architecture: ArchitectureIn | None = None
    # The service picks depth and width from measured candidates (`distillation.students.sizing`).
    target: TargetIn | None = None
    init: Literal["teacher", "random"] = "teacher"
    # Keep only the token ids the job's data use (and the special tokens) in the student.
    # Unset: on for a student sized to a target, where the task and tokenizer allow it.
    prune_vocabulary: bool | None = None

    @model_validator(mode="after")
    def _one_source(self) -> StudentIn:
        given = [self.model, self.architecture, self.target]
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one of student.model, student.architecture or "
                             "student.target")
        return self


@pydantic_dataclass(config=ConfigDict(extra="forbid"))
class DataIn(DataSpec):
    """The core's `DataSpec` as the request takes it: its fields, checked, with bounds."""

    max_seq_length: int = Field(default=DataSpec.max_seq_length, ge=8, le=4096)


class LossIn(Strict):
    type: str
    weight: float = Field(1.0, ge=0, le=1000)
    # Set: the weight moves linearly from `weight` to `weight_end` over the optimizer steps.
    weight_end: float | None = Field(None, ge=0, le=1000)
    beta: float = Field(0.5, gt=0, lt=1)  # jsd: the teacher's share of the mixture
    layer_map: dict[int, int] | None = None


def _default_losses() -> list[LossIn]:
    return [LossIn(type="kl", weight=0.5), LossIn(type="ce", weight=0.5)]


# `distillation.job_checks.METHODS`, for the schema (a test keeps them equal).
Method = Literal["token", "sequence", "on-policy"]


class DistillationIn(Strict):
    # `lambda` is a Python keyword: the field is `lambda_`, read and written as "lambda".
    model_config = ConfigDict(serialize_by_alias=True)

    # "token": on the answers in the file; "sequence": on the teacher's own answers (written
    # once, `generation`); "on-policy": answers sampled from the student too, scored by the
    # teacher. The last two are for language models.
    method: Method = "token"
    # on-policy only (unset: 0.5 each): the share of batches whose answers the student samples,
    # and the generalised JSD's weight (0: forward KL, 1: reverse KL).
    lambda_: float | None = Field(None, ge=0, le=1, alias="lambda")
    beta: float | None = Field(None, ge=0, le=1)
    temperature: float = Field(2.0, gt=0, le=100)
    # Set: the temperature moves linearly from `temperature` to this over the optimizer steps.
    temperature_end: float | None = Field(None, gt=0, le=100)
    losses: list[LossIn] = Field(default_factory=_default_losses, min_length=1, max_length=16)


class GenerationIn(Strict):
    """The answers the teacher writes (and the student samples) in language-model jobs."""

    max_new_tokens: int = Field(64, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0, le=2)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    num_samples: int = Field(1, ge=1, le=16)  # answers per prompt


class DataGenerationIn(Strict):
    """Prompts the teacher writes for a task, in the style of a file of example records."""

    task_description: str = Field(min_length=1, max_length=4000)
    # A file of the tenant uploaded with purpose `train`, with at least
    # `distillation.job_checks.MIN_GENERATION_EXAMPLES` records.
    examples_file: str = Field(min_length=1, max_length=255)
    num_samples: int = Field(100, ge=1, le=10_000)
    temperature: float = Field(0.8, ge=0, le=2)


class AugmentationIn(Strict):
    # Checked against `distillation.config.AUGMENT_METHODS` in `validation`, naming the method.
    methods: list[str] = Field(min_length=1, max_length=8)
    multiplier: int = Field(1, ge=1, le=32)


class HyperparametersIn(Strict):
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(5e-5, gt=0, le=1)
    seed: int = Field(42, ge=0, le=2**31 - 1)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, le=1)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_grad_norm: float = Field(1.0, gt=0, le=1000)
    lr_scheduler: Literal["linear", "cosine"] = "linear"
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    eval_batch_size: int = Field(64, ge=1, le=4096)
    log_every_steps: int = Field(20, ge=1, le=100_000)
    checkpoint_every_steps: int = Field(200, ge=1, le=10_000_000)
    cache_teacher: bool = True
    teacher_cache_top_k: int = Field(32, ge=1, le=1024)
    # The exported student: the best epoch on the validation file, or the last one.
    select: Literal["best", "last"] = "best"
    # Devices the distill stage trains on at once (DDP, one process each; the global batch
    # stays `batch_size`); a worker class with that many must be configured.
    devices: int = Field(1, ge=1, le=64)
    # Minutes of wall clock the job's epochs are planned to fit (up to a week); unset: none.
    time_budget_minutes: float | None = Field(None, gt=0, le=7 * 24 * 60)
    # Quantisation-aware distillation: the share of the last optimizer steps trained through
    # int8-rounded Linears, as the ONNX int8 export runs (sequence-classification only); 0: off.
    quantization_aware: float = Field(0.0, ge=0, le=1)


class JobCreate(Strict):
    task: str
    teacher: TeacherIn
    student: StudentIn
    training_file: str
    validation_file: str | None = None
    transfer_file: str | None = None
    augmentation: AugmentationIn | None = None
    data: DataIn = Field(default_factory=DataIn)
    distillation: DistillationIn = Field(default_factory=DistillationIn)
    generation: GenerationIn | None = None
    data_generation: DataGenerationIn | None = None
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)


class ProgressOut(BaseModel):
    stage: str | None = None
    percent: float = 0.0
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    eta_seconds: float | None = None


class JobErrorOut(BaseModel):
    code: str
    message: str


class ResourcesOut(BaseModel):
    # Accelerator memory per device the service estimated at creation (null for jobs created
    # before it did), and the queue of workers the job was sent to.
    estimated_memory_bytes: int | None = None
    queue: str


class JobOut(BaseModel):
    id: str
    object: Literal["distillation.job"] = "distillation.job"
    status: str
    task: str
    teacher: dict[str, Any]
    student: dict[str, Any]
    training_file: str
    validation_file: str | None
    transfer_file: str | None = None
    augmentation: dict[str, Any] | None = None
    data: dict[str, Any]
    hyperparameters: dict[str, Any]
    distillation: dict[str, Any]
    generation: dict[str, Any] | None = None
    data_generation: dict[str, Any] | None = None
    metadata: dict[str, Any]
    progress: ProgressOut
    metrics: dict[str, Any]
    result_model: str | None
    # The fine-tuned teacher, registered as a model, when the job fine-tuned its teacher.
    teacher_model: str | None = None
    error: JobErrorOut | None
    attempts: int
    resources: ResourcesOut | None = None
    created_at: int
    started_at: int | None
    finished_at: int | None


class JobEventOut(BaseModel):
    id: str
    object: Literal["distillation.job.event"] = "distillation.job.event"
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class CheckpointOut(BaseModel):
    id: str
    object: Literal["distillation.job.checkpoint"] = "distillation.job.checkpoint"
    step: int
    epoch: int
    created_at: int
    train_loss: float | None = None
    size_bytes: int | None = None
