"""What a task is, as the engine, the predictor, the model card and the API see it: the `Task`
strategy each task module implements, and the encoded data a task hands the engine.

`engine.run_job` is one pipeline (fine-tune, cache, distil, evaluate, export) for every task; at
each point where the tasks differ it asks the job's `Task`: which model class loads a teacher,
which records the files hold, how a batch enters a model, what the teacher cache keeps, what the
loss terms compare, which metrics are measured, how a finished model predicts, what its card
says. The registry (`tasks.registry`) maps each task name to its `Task`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from distillation.config import DataSpec, JobConfig, LossSpec
from distillation.losses.checks import as_spec
from distillation.losses.functions import LossInputs
from distillation.models.info import ModelInfo, model_info
from distillation.training.loop import Collator, Features
from distillation.training.teacher_cache import CacheFormat, TeacherCache

# Loss terms that compare hidden states, so both models must expose comparable ones.
HIDDEN_LOSSES = ("hidden_mse", "attention_mse", "cosine")
Problems = list[tuple[str, str]]  # (request field, message), as `checks.check_losses` gives
# Without a validation file, the models are evaluated on (up to) this many training examples,
# and the split is marked "train": those figures show how well they fit, not how they generalise.
TRAIN_EVAL_LIMIT = 1000


@dataclass(frozen=True)
class TaskCard:
    """What the model card says of a task's model."""

    pipeline_tag: str
    noun: str  # "A 1.2M-parameter <noun> distilled from …"
    metrics: tuple[str, ...]  # the quality rows, in order, where the report has them
    usage: str


@dataclass
class Side:
    """One model's view of the job's files: its encoded examples and how they are batched."""

    tokenizer: PreTrainedTokenizerBase
    train: list[Features]
    evaluation: list[Features]
    collator: Collator


@dataclass
class TaskData:
    """The job's files, read and encoded for the teacher and the student.

    `student.train` is what distillation iterates over: when the student tokenises apart from the
    teacher, its examples carry the teacher's inputs too, named `teacher_prefix + name`.
    `teacher.train` is what a base teacher is fine-tuned on. Token-level tasks share one side.
    A student with a pruned vocabulary (`prune`) reads re-numbered ids, so its examples carry
    the teacher's too, though both tokenise alike (the same positions).
    """

    teacher: Side
    student: Side
    eval_split: str  # "validation", or "train" when no validation file was given
    labels: list[str] | None = None  # classification: class id → name, both heads' order
    teacher_prefix: str = ""
    max_length: int = 0  # tokens per input (and per target, for seq2seq)
    # seq2seq: (source, reference target) of the evaluation records, for generation metrics.
    eval_pairs: list[tuple[str, str]] = field(default_factory=list)
    # How many training examples came from where: "labelled" (the training file), "transfer"
    # (the transfer file), "augmented" (drawn from both by `augment`).
    sources: dict[str, int] = field(default_factory=dict)
    # The student's ids are the teacher's renumbered (a pruned vocabulary): the teacher still
    # gets its own ids, but both see the same tokens at the same positions.
    renumbered: bool = False

    @property
    def separate_tokenizers(self) -> bool:
        return bool(self.teacher_prefix)

    @property
    def same_token_positions(self) -> bool:
        """Whether token i of an example is the same text for both models (hidden states and
        attention maps can then be compared position by position)."""
        return not self.teacher_prefix or self.renumbered


class MissingColumns(ValueError):
    """A file lacks the columns a task reads, said as "<file> <id> has <what> (its columns: …);
    <hint>" by the API, naming the request field `param`."""

    def __init__(self, param: str, what: str, hint: str) -> None:
        super().__init__(f"has {what}; {hint}")
        self.param, self.what, self.hint = param, what, hint


class Task:
    """One task's answers to the engine, the predictor, the card and the API (see the module
    notes). Subclasses set the class attributes and implement the hooks."""

    name: ClassVar[str]
    model_class: ClassVar[Any]  # the `AutoModelFor…` class that loads a model for the task
    card: ClassVar[TaskCard]
    report_metric: ClassVar[str]  # the metric the report leads with
    head: ClassVar[str]  # the predict head: "classify" (labels and scores) or "generate" (text)
    labelled: ClassVar[bool] = False  # records carry class labels the API checks
    # Learns from unlabelled texts too (a transfer file, augmentation), labelled by the teacher.
    transfer_data: ClassVar[bool] = False
    # Loss terms the task cannot use, with the reason.
    unavailable_losses: ClassVar[Mapping[str, str]] = {}
    # Whether layer losses can compare encoder-decoder models (their decoders) in this task.
    layer_losses_on_encoder_decoder: ClassVar[bool] = True
    # Whether the teacher cache keeps the teacher's hidden states for the losses that read them
    # (`training.hidden_cache`); where it does not, such a job runs the teacher every step.
    caches_hidden_states: ClassVar[bool] = False
    # Why the task cannot prune the student's vocabulary (`student.prune_vocabulary`); None
    # where it can (then it implements `with_student_vocabulary`).
    vocabulary_pruning_refusal: ClassVar[str | None] = "it is implemented for classifiers only"
    # How a candidate student, initialised from the teacher, is compared with it before training
    # when sizing the student to a target (`students.directions`): "agreement", the share of the
    # teacher's choices it makes too, or "likelihood", the mean log-probability it gives them
    # (over `prediction_rows`), for tasks where agreement is near nothing for every candidate
    # and so cannot rank them.
    init_score: ClassVar[str] = "agreement"

    # -- checks (`job_checks`: at job creation, and again in the engine) ------------------------
    def record_columns(self, spec: DataSpec, file_columns: Sequence[str], *,
                       validation: bool) -> dict[str, str | None]:
        """{request field: column} the task reads from a training (or validation) file;
        `MissingColumns` when the file cannot serve the task at all."""
        raise NotImplementedError

    def check_pair(self, teacher: ModelInfo, student: ModelInfo | None, *,
                   teacher_vocab: str | None = None, student_vocab: str | None = None) -> Problems:
        """Problems with this teacher and student (None: built from the teacher's design)."""
        return []

    def check_pair_losses(
        self, specs: Sequence[LossSpec | Mapping[str, Any]], teacher: ModelInfo,
        student: ModelInfo | None, *, same_tokenizer: bool = True,
    ) -> Problems:
        """Problems with loss terms that the task or the pair of models cannot serve, each
        naming `distillation.losses[i].type`."""
        problems: Problems = []
        pair = [("teacher", teacher)] + ([("student", student)] if student is not None else [])
        for k, raw in enumerate(specs):
            spec = as_spec(raw)
            param = f"distillation.losses[{k}].type"
            if spec.type in self.unavailable_losses:
                problems.append((param, f"{param}: {spec.type} is not available for {self.name}: "
                                 f"{self.unavailable_losses[spec.type]}"))
            if spec.type not in HIDDEN_LOSSES:
                continue
            blank = [f"the {side} ({info.model_type})" for side, info in pair
                     if info.num_layers <= 0 or info.hidden_size <= 0]
            if blank:
                problems.append((param, f"{param}: {spec.type} compares hidden states, but "
                                 f"{' and '.join(blank)} reports no transformer layers"))
            elif student is not None and student.is_encoder_decoder != teacher.is_encoder_decoder:
                problems.append((param, f"{param}: {spec.type} compares the hidden states of two "
                                 f"models of one kind; the teacher is {model_kind(teacher)} model "
                                 f"and the student {model_kind(student)} one"))
            elif not self.layer_losses_on_encoder_decoder and any(
                info.is_encoder_decoder for _, info in pair
            ):
                problems.append((param, f"{param}: {spec.type} is not available for "
                                 "encoder-decoder classifiers (they have no single stack of "
                                 "hidden states); use kl, ce or mse_logits"))
            elif not same_tokenizer and (spec.type != "cosine" or spec.pooling == "mean"):
                problems.append((param, f"{param}: {spec.type} compares token positions, and the "
                                 "student tokenises differently from the teacher; use a student "
                                 "with the teacher's tokenizer, or cosine with pooling cls"))
        return problems

    # -- data and models ------------------------------------------------------------------------
    def prepare(self, config: JobConfig, teacher: ModelInfo) -> TaskData:
        """Read and encode the training (and validation) file."""
        raise NotImplementedError

    def check_data(self, config: JobConfig, data: TaskData) -> None:
        """ValueError when the losses cannot work on the data as encoded."""

    def with_student_vocabulary(self, data: TaskData, tokenizer: PreTrainedTokenizerBase,
                                new_id: Mapping[int, int]) -> TaskData:
        """The data with the student's token ids re-numbered (`old id → new_id[old id]`) to a
        pruned vocabulary read by `tokenizer`; the teacher's inputs stay as they were."""
        raise ValueError(f"{self.name} students cannot prune their vocabulary: "
                         f"{self.vocabulary_pruning_refusal}")

    def load_model(self, path: Path, data: TaskData, *, attn: str | None,
                   new_head: bool = False) -> PreTrainedModel:
        """The model at `path` for this task (`new_head`: a base teacher about to be fine-tuned)."""
        raise NotImplementedError

    def finetune_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Cross-entropy of `model` on the batch's labels (fine-tuning a base teacher)."""
        raise NotImplementedError

    def loss_specs(self, specs: list[LossSpec]) -> list[LossSpec]:
        """The job's loss terms as this task applies them."""
        return specs

    def loss_shape(self, config: PretrainedConfig) -> ModelInfo:
        """The sizes the loss terms see of a model (layer losses: its layer count)."""
        return model_info(config)

    # -- the distillation step ------------------------------------------------------------------
    def forward_inputs(self, model: nn.Module, batch: dict[str, Tensor],
                       prefix: str = "") -> dict[str, Any]:
        """What `model`'s forward takes from a batch (inputs named `prefix + name`)."""
        raise NotImplementedError

    def cache_skip_reason(self, loss_types: Collection[str]) -> str | None:
        """Why this task's teacher cache cannot serve these loss terms; None when it can."""
        return None

    def cache_format(self, config: JobConfig, data: TaskData) -> CacheFormat:
        """What the teacher cache keeps of the teacher's outputs."""
        raise NotImplementedError

    def cached_teacher(self, cache: TeacherCache, batch: dict[str, Tensor]) -> Any:
        """The cached teacher outputs of a batch's examples (`loss_inputs`'s `cached`)."""
        raise NotImplementedError

    def loss_inputs(self, batch: dict[str, Tensor], student_out: Any, teacher_out: Any,
                    cached: Any, *, hidden: bool, attentions: bool) -> LossInputs:
        """What the loss terms compare on one batch: the teacher's side is `teacher_out` (a live
        forward pass) or `cached` (from the teacher cache, `teacher_out` then None, unless the
        teacher runs for the hidden states the cache does not keep)."""
        raise NotImplementedError

    def prediction_rows(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """(N, C) `model`'s logits for the N choices a batch asks of it (an example's class, a
        target token's next token): how a candidate student is compared with its teacher."""
        raise NotImplementedError

    # -- evaluation -----------------------------------------------------------------------------
    def epoch_metrics(self, model: nn.Module, data: TaskData, *, device: torch.device,
                      batch_size: int, on_batch: Callable[[], None]) -> dict[str, float]:
        """The student's metrics after each epoch, named as the metrics events name them."""
        raise NotImplementedError

    def evaluate(self, model: PreTrainedModel, side: Side, data: TaskData, *,
                 device: torch.device, batch_size: int,
                 on_batch: Callable[[], None]) -> dict[str, float]:
        """The report's quality metrics of `model` on `side`'s evaluation examples."""
        raise NotImplementedError

    def answer_prompts(self, data: TaskData) -> list[list[int]]:
        """The evaluation examples' prompts (token ids) whose answers the report compares
        (`export.generations`); none for a task whose models do not answer prompts."""
        return []

    # -- prediction -----------------------------------------------------------------------------
    def classify(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 labels: list[str], inputs: Sequence[Any], *, max_length: int,
                 device: torch.device) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{self.name} models do not classify")

    def generate(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 inputs: Sequence[str], *, max_new_tokens: int, max_length: int,
                 device: torch.device) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{self.name} models do not generate")


def model_kind(info: ModelInfo) -> str:
    return "an encoder-decoder (seq2seq)" if info.is_encoder_decoder else "a decoder-only"


def attn_kwargs(attn: str | None) -> dict[str, Any]:
    """`from_pretrained`'s attention implementation argument, when one is asked for."""
    return {"attn_implementation": attn} if attn else {}
