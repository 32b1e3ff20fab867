"""Sequence classification: a text (or a text pair) → one of the data's labels.

Records: `text_column` (+ `text_pair_column`) and `label_column` (`classification_data`). The
loss terms compare one row of logits per example; the teacher cache keeps that row whole
(`LogitCache`), and the teacher's hidden states at the layers the hidden-state losses read
(`training.hidden_cache`). Quality: accuracy and macro-F1 (the report leads with accuracy). Prediction:
labels with a probability per label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch import Tensor, nn
from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distillation.config import DataSpec, JobConfig, Reporter
from distillation.layout import teacher_cache_path
from distillation.losses.functions import LossInputs
from distillation.models.info import CLASSIFICATION, ModelInfo
from distillation.models.loading import load_model
from distillation.tasks.base import Side, Task, TaskCard, TaskData, attn_kwargs
from distillation.tasks.classification_data import prepare_data, with_student_vocabulary
from distillation.training.hidden_cache import CachedHiddenStates
from distillation.training.loop import Collator, Features, autocast, model_inputs, to_device
from distillation.training.teacher_cache import (
    EXAMPLE_INDEX,
    TeacherCache,
    dataset_fingerprint,
    teacher_cache,
)

ClassifyInput = str | tuple[str, str] | list[str]
PREDICT_BATCH = 32


@dataclass
class LogitCache:
    """The teacher's logits on every training example: row i belongs to example i."""

    logits: Tensor  # (N, C) float32, on the training device
    path: Path | None = None
    reused: bool = False  # read from an earlier run's file rather than computed now

    def lookup(self, batch: dict[str, Tensor]) -> Tensor:
        """The cached teacher logits of a batch's examples, in batch order."""
        return self.logits[batch[EXAMPLE_INDEX].to(self.logits.device)]

    def tensors(self) -> dict[str, Tensor]:
        return {"logits": self.logits}


@dataclass
class CachedTeacher:
    """The teacher's cached outputs on one batch: its logits, and its hidden states when the
    cache keeps them."""

    logits: Tensor
    hidden: CachedHiddenStates | None


@dataclass
class LogitFormat:
    """The classification teacher cache: each example's whole row of logits."""

    prefix: str = ""  # the teacher's inputs are `teacher_*` when the student tokenises apart
    path: Path | None = None
    kind: str = "logits"
    header: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, features: Sequence[Features]) -> str:
        return dataset_fingerprint(features, self.prefix)

    def forward(self, teacher: nn.Module, batch: dict[str, Tensor], **flags: Any) -> Any:
        return teacher(**model_inputs(teacher, batch, self.prefix), **flags)

    def split(self, logits: Tensor, batch: dict[str, Tensor]) -> list[Any]:
        return list(logits.float())

    def build(self, examples: list[Any], device: torch.device) -> LogitCache:
        return LogitCache(torch.stack(examples), self.path, reused=False)

    def restore(self, tensors: dict[str, Tensor], examples: int,
                device: torch.device) -> LogitCache | None:
        if "logits" not in tensors or tensors["logits"].shape[0] != examples:
            return None
        return LogitCache(tensors["logits"].to(device), self.path, reused=True)

    def reused_message(self, examples: int) -> str:
        return f"Reusing the teacher's cached outputs on {examples} examples."

    def cached_message(self, cache: Any, examples: int) -> str:
        return (f"Cached the teacher's outputs on {examples} examples; every epoch reuses them "
                "instead of running the teacher.")


def teacher_logit_cache(
    teacher: nn.Module, features: Sequence[Features], collator: Collator, *, work_dir: Path,
    prefix: str, batch_size: int, device: torch.device, reporter: Reporter,
) -> LogitCache:
    """The teacher's logits on `features`, through the one teacher-cache loop."""
    fmt = LogitFormat(prefix, teacher_cache_path(work_dir))
    cache: LogitCache = teacher_cache(teacher, features, collator, fmt, work_dir=work_dir,
                                      batch_size=batch_size, device=device,
                                      reporter=reporter).outputs
    return cache


@torch.inference_mode()
def predict_ids(
    model: nn.Module, features: Sequence[Features], collator: Collator, *, device: torch.device,
    batch_size: int, prefix: str = "", on_batch: Callable[[], None] | None = None,
) -> list[int]:
    """The argmax class of each example (inputs named `prefix + name` in the batch); `on_batch`
    runs before each batch (the engine checks for cancellation there)."""
    model.eval()
    predictions: list[int] = []
    for start in range(0, len(features), batch_size):
        if on_batch is not None:
            on_batch()
        batch = to_device(collator(list(features[start : start + batch_size])), device)
        with autocast(device):
            logits = model(**model_inputs(model, batch, prefix)).logits
        predictions += logits.argmax(dim=-1).tolist()
    return predictions


def classification_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """{"accuracy", "macro_f1"} (sklearn; F1 over the classes present in either list)."""
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def evaluate(
    model: nn.Module, features: Sequence[Features], collator: Collator, *, device: torch.device,
    batch_size: int, prefix: str = "", on_batch: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Accuracy and macro-F1 of `model` on labelled `features`."""
    predictions = predict_ids(model, features, collator, device=device, batch_size=batch_size,
                              prefix=prefix, on_batch=on_batch)
    return classification_metrics([int(f["labels"]) for f in features], predictions)


def _as_pair(item: ClassifyInput) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0], item[1]
    if isinstance(item, (tuple, list)) and len(item) == 1 and isinstance(item[0], str):
        return item[0], None
    raise ValueError("each input must be a text or a pair [text, text_pair]")


class ClassificationTask(Task):
    name = CLASSIFICATION
    model_class = AutoModelForSequenceClassification
    report_metric = "accuracy"
    head = "classify"
    labelled = True
    transfer_data = True
    layer_losses_on_encoder_decoder = False
    caches_hidden_states = True
    vocabulary_pruning_refusal = None
    card = TaskCard(
        pipeline_tag="text-classification", noun="text classifier",
        metrics=("macro_f1",),
        usage="""from transformers import pipeline

classifier = pipeline("text-classification", model="path/to/this/directory")
classifier("a moving, funny film")""",
    )

    def record_columns(self, spec: DataSpec, file_columns: Sequence[str], *,
                       validation: bool) -> dict[str, str | None]:
        if not validation:
            columns = {"data.text_column": spec.text_column,
                       "data.text_pair_column": spec.text_pair_column,
                       "data.label_column": spec.label_column}
        else:
            columns = {
                "data.validation_text_column": spec.validation_text_column or spec.text_column,
                "data.validation_text_pair_column": (
                    spec.validation_text_pair_column or spec.text_pair_column
                ),
                "data.validation_label_column": spec.validation_label_column or spec.label_column,
            }
        return {param: column for param, column in columns.items() if column is not None}

    def prepare(self, config: JobConfig, teacher: ModelInfo) -> TaskData:
        return prepare_data(config, teacher)

    def check_data(self, config: JobConfig, data: TaskData) -> None:
        types = {spec.type for spec in config.losses}
        if not data.same_token_positions and types & {"hidden_mse", "attention_mse"}:
            raise ValueError("hidden_mse and attention_mse compare token positions, so they need "
                             "a student with the teacher's tokenizer")

    def with_student_vocabulary(self, data: TaskData, tokenizer: PreTrainedTokenizerBase,
                                new_id: Mapping[int, int]) -> TaskData:
        return with_student_vocabulary(data, tokenizer, new_id)

    def load_model(self, path: Path, data: TaskData, *, attn: str | None,
                   new_head: bool = False) -> PreTrainedModel:
        """A classifier whose head names the data's labels; `new_head`: a fresh head for them
        (a base model about to be fine-tuned)."""
        assert data.labels is not None
        id2label = dict(enumerate(data.labels))
        label2id = {label: i for i, label in enumerate(data.labels)}
        head: dict[str, Any] = {"num_labels": len(data.labels), "id2label": id2label,
                                "label2id": label2id, "ignore_mismatched_sizes": True}
        model = load_model(self.model_class, path, **(head if new_head else {}),
                           **attn_kwargs(attn))
        model.config.id2label, model.config.label2id = id2label, label2id
        return model  # type: ignore[no-any-return]

    def finetune_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(**model_inputs(model, batch)).logits
        return F.cross_entropy(logits.float(), batch["labels"])

    def forward_inputs(self, model: nn.Module, batch: dict[str, Tensor],
                       prefix: str = "") -> dict[str, Any]:
        return model_inputs(model, batch, prefix)

    def prediction_rows(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(**self.forward_inputs(model, batch)).logits  # type: ignore[no-any-return]

    def cache_format(self, config: JobConfig, data: TaskData) -> LogitFormat:
        return LogitFormat(data.teacher_prefix, teacher_cache_path(config.work_dir))

    def cached_teacher(self, cache: TeacherCache, batch: dict[str, Tensor]) -> CachedTeacher:
        logits = cache.outputs.lookup(batch)
        if cache.hidden is None:
            return CachedTeacher(logits, None)
        mask = batch.get("attention_mask")
        return CachedTeacher(logits, cache.hidden.lookup(
            batch[EXAMPLE_INDEX], mask, batch["input_ids"].shape[1], logits.device))

    def loss_inputs(self, batch: dict[str, Tensor], student_out: Any, teacher_out: Any,
                    cached: CachedTeacher | None, *, hidden: bool,
                    attentions: bool) -> LossInputs:
        teacher_logits = cached.logits if cached is not None else teacher_out.logits
        # The hidden states come from the cache when it keeps them, else from the teacher, run
        # for them (`engine.DistillLoss`).
        teacher_hidden = None
        if hidden:
            teacher_hidden = (cached.hidden if cached is not None and cached.hidden is not None
                              else teacher_out.hidden_states)
        return LossInputs(
            student_logits=student_out.logits, teacher_logits=teacher_logits,
            labels=batch["labels"], attention_mask=batch.get("attention_mask"),
            student_hidden=student_out.hidden_states if hidden else None,
            teacher_hidden=teacher_hidden,
            student_attentions=student_out.attentions if attentions else None,
            teacher_attentions=teacher_out.attentions if attentions else None,
        )

    def epoch_metrics(self, model: nn.Module, data: TaskData, *, device: torch.device,
                      batch_size: int, on_batch: Callable[[], None]) -> dict[str, float]:
        metrics = evaluate(model, data.student.evaluation, data.student.collator, device=device,
                           batch_size=batch_size, on_batch=on_batch)
        return {"eval_accuracy": metrics["accuracy"], "eval_macro_f1": metrics["macro_f1"]}

    def evaluate(self, model: PreTrainedModel, side: Side, data: TaskData, *,
                 device: torch.device, batch_size: int,
                 on_batch: Callable[[], None]) -> dict[str, float]:
        return evaluate(model, side.evaluation, side.collator, device=device,
                        batch_size=batch_size, on_batch=on_batch)

    @torch.inference_mode()
    def classify(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 labels: list[str], inputs: Sequence[Any], *, max_length: int,
                 device: torch.device) -> list[dict[str, Any]]:
        """[{"label", "score", "scores": {label: probability}}] for each text or text pair."""
        return classify_with(lambda encoded: model(**encoded.to(device)).logits, tokenizer,
                             labels, inputs, max_length=max_length)


LogitsOf = Callable[[Any], Tensor]  # a tokenised batch (a BatchEncoding of tensors) → logits


@torch.inference_mode()
def classify_with(logits_of: LogitsOf, tokenizer: PreTrainedTokenizerBase, labels: list[str],
                  inputs: Sequence[Any], *, max_length: int) -> list[dict[str, Any]]:
    """[{"label", "score", "scores": {label: probability}}] for each text or text pair, the logits
    given by `logits_of`: every runtime (torch, ONNX Runtime) shares the tokenising, truncation,
    batching and label order here, so they answer alike."""
    pairs = [_as_pair(item) for item in inputs]
    results: list[dict[str, Any]] = [{} for _ in pairs]
    # Singles and pairs are tokenised apart: a tokenizer call takes one kind at a time.
    groups = [
        [i for i, (_, b) in enumerate(pairs) if b is None],
        [i for i, (_, b) in enumerate(pairs) if b is not None],
    ]
    for indices in groups:
        for start in range(0, len(indices), PREDICT_BATCH):
            chunk = indices[start : start + PREDICT_BATCH]
            texts = [pairs[i][0] for i in chunk]
            seconds = [pairs[i][1] for i in chunk]
            encoded = tokenizer(
                texts,
                seconds if seconds[0] is not None else None,  # type: ignore[arg-type]
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            probs = torch.softmax(logits_of(encoded).float(), dim=-1).cpu()
            for i, row in zip(chunk, probs.tolist(), strict=True):
                best = max(range(len(row)), key=row.__getitem__)
                scores = dict(zip(labels, map(float, row), strict=True))
                results[i] = {"label": labels[best], "score": row[best], "scores": scores}
    return results
