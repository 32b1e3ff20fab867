"""`run_job`: teacher in, distilled student and its report out.

Stages, each reported through the `Reporter`: `finetune_teacher` (when asked), `cache_teacher`
(when the teacher's outputs are worth caching), `distill`, `evaluate`, `export`. The engine
knows nothing of where the config came from or where the reports go; `reporter.should_stop()`
is asked before every batch and a stop raises `Cancelled`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoModelForSequenceClassification, PreTrainedModel, set_seed
from transformers.modeling_outputs import SequenceClassifierOutput

from distillation.cache import (
    LogitCache,
    skip_reason,
    teacher_logit_cache,
    with_example_index,
)
from distillation.checkpoint import Checkpointer, mark_teacher_finetuned, teacher_finetuned
from distillation.config import SUPPORTED_TASKS, JobConfig, JobResult, Reporter
from distillation.data import TEACHER_PREFIX
from distillation.evaluate import evaluate
from distillation.export import save_model, write_report
from distillation.finetune import finetune_teacher
from distillation.inspect import BASE_TASK, ModelInfo, inspect_model, model_info
from distillation.lm_engine import run_token_job
from distillation.losses import CompositeLoss, LossInputs, build_losses
from distillation.prepare import Prepared, prepare_data
from distillation.report import (
    build_report,
    count_parameters,
    measure_speed,
    model_entry,
    weights_size,
)
from distillation.students import build_student
from distillation.tasks import TOKEN_TASKS
from distillation.training import (
    FitResult,
    Tracker,
    check_stop,
    fit,
    model_inputs,
    resolve_device,
)

HIDDEN_LOSSES = ("hidden_mse", "cosine")
ATTENTION_LOSSES = ("attention_mse",)


def check_teacher(config: JobConfig, info: ModelInfo) -> None:
    """ValueError unless the job's task runs here and the teacher can teach it."""
    if config.task not in SUPPORTED_TASKS:
        raise ValueError(f"task {config.task!r} is not supported yet; "
                         f"supported: {', '.join(SUPPORTED_TASKS)}")
    if info.task == BASE_TASK and config.teacher_finetune is None:
        raise ValueError(
            f"the teacher {config.teacher_name!r} is a base {info.model_type} model with no "
            f"{config.task} head: set teacher_finetune to fine-tune it on the training file first"
        )
    if info.task not in (BASE_TASK, config.task):
        raise ValueError(f"the teacher is a {info.task} model, not {config.task}")


def _load_teacher(
    config: JobConfig, data: Prepared, device: torch.device, reporter: Reporter,
    attn: str | None,
) -> tuple[PreTrainedModel, Path]:
    """The teacher, fine-tuned first when the job asks; and the directory its weights are in."""
    finetuned = config.work_dir / "teacher"
    if config.teacher_finetune is not None and not teacher_finetuned(finetuned):
        save_dir = finetuned
        teacher, fitted = finetune_teacher(
            teacher_path=config.teacher_path, spec=config.teacher_finetune,
            hp=config.hyperparameters, labels=data.labels, features=data.teacher_train,
            collator=data.teacher_collator, tokenizer=data.teacher_tokenizer, save_dir=save_dir,
            device=device, reporter=reporter, attn_implementation=attn,
        )
        mark_teacher_finetuned(save_dir, epochs=fitted.epochs, steps=fitted.steps)
    else:
        kwargs: dict[str, Any] = {"attn_implementation": attn} if attn else {}
        save_dir = config.teacher_path if config.teacher_finetune is None else finetuned
        if config.teacher_finetune is not None:
            reporter.message("Using the teacher fine-tuned by an earlier attempt of this job.")
        teacher = AutoModelForSequenceClassification.from_pretrained(str(save_dir), **kwargs)
    teacher.config.id2label = dict(enumerate(data.labels))
    teacher.config.label2id = {label: i for i, label in enumerate(data.labels)}
    teacher.to(device)  # type: ignore[arg-type]
    teacher.eval().requires_grad_(False)
    return teacher, save_dir


def _teacher_cache(
    config: JobConfig, data: Prepared, teacher: PreTrainedModel, losses: CompositeLoss,
    device: torch.device, reporter: Reporter,
) -> LogitCache | None:
    """The teacher's logits on the training set, cached once, when the job asks and it pays."""
    hp = config.hyperparameters
    if not hp.cache_teacher:
        return None
    reason = skip_reason(hp, needs_hidden_states=losses.needs_hidden_states,
                         needs_attentions=losses.needs_attentions, num_examples=len(data.train))
    if reason is not None:
        reporter.message(f"Not caching the teacher's outputs: {reason}.")
        return None
    return teacher_logit_cache(
        teacher, data.train, data.student_collator, work_dir=config.work_dir,
        prefix=TEACHER_PREFIX if data.separate_tokenizers else "",
        batch_size=hp.eval_batch_size, device=device, reporter=reporter,
    )


def distill(
    config: JobConfig, data: Prepared, teacher: PreTrainedModel, student: PreTrainedModel,
    losses: CompositeLoss, device: torch.device, reporter: Reporter,
) -> tuple[FitResult, dict[str, Any]]:
    """The `cache_teacher` stage (when it pays) and the `distill` stage, evaluating every epoch."""
    hidden, attentions = losses.needs_hidden_states, losses.needs_attentions
    teacher_prefix = TEACHER_PREFIX if data.separate_tokenizers else ""
    hp = config.hyperparameters
    last_eval: dict[str, Any] = {}
    cache = _teacher_cache(config, data, teacher, losses, device, reporter)
    features = with_example_index(data.train) if cache is not None else data.train

    def compute_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        flags = {"output_hidden_states": hidden, "output_attentions": attentions}
        t_out: Any
        if cache is not None:  # no hidden states or attentions wanted: logits are all it needs
            t_out = SequenceClassifierOutput(logits=cache.lookup(batch))
        else:
            with torch.no_grad():
                t_out = teacher(**model_inputs(teacher, batch, teacher_prefix), **flags)
        s_out = student(**model_inputs(student, batch), **flags)
        return losses(LossInputs(
            student_logits=s_out.logits, teacher_logits=t_out.logits, labels=batch["labels"],
            attention_mask=batch.get("attention_mask"),
            student_hidden=s_out.hidden_states if hidden else None,
            teacher_hidden=t_out.hidden_states if hidden else None,
            student_attentions=s_out.attentions if attentions else None,
            teacher_attentions=t_out.attentions if attentions else None,
        ))

    def on_epoch_end(step: int, epoch: int) -> dict[str, Any]:
        metrics = evaluate(student, data.student_eval, data.student_collator, device=device,
                           batch_size=hp.eval_batch_size, on_batch=lambda: check_stop(reporter))
        last_eval.update(step=step, epoch=epoch, eval_accuracy=metrics["accuracy"],
                         eval_macro_f1=metrics["macro_f1"])
        reporter.metrics(step, dict(last_eval))
        return dict(last_eval)

    reporter.message(f"Distilling into a {count_parameters(student):,}-parameter student on "
                     f"{len(data.train)} examples ({device.type}).")
    result = fit(
        modules=[student, losses], features=features, collator=data.student_collator,
        compute_loss=compute_loss, hp=hp, epochs=hp.epochs, batch_size=hp.batch_size,
        learning_rate=hp.learning_rate, device=device, reporter=reporter, stage="distill",
        on_epoch_end=on_epoch_end, on_progress=losses.set_progress,
        checkpoints=Checkpointer(config.work_dir, hp=hp, reporter=reporter,
                                 modules={"student": student, "losses": losses}),
    )
    return result, last_eval


def _evaluate(
    config: JobConfig, data: Prepared, teacher: PreTrainedModel, student: PreTrainedModel,
    device: torch.device, reporter: Reporter,
) -> dict[str, dict[str, Any]]:
    """Quality on the evaluation split, then CPU speed, of both models."""
    tracker = Tracker(reporter, "evaluate", 4)
    batch_size = config.hyperparameters.eval_batch_size
    sides = {
        "teacher": (teacher, data.teacher_eval, data.teacher_collator),
        "student": (student, data.student_eval, data.student_collator),
    }
    results: dict[str, dict[str, Any]] = {}
    epochs = config.hyperparameters.epochs
    for n, (name, (model, features, collator)) in enumerate(sides.items()):

        def on_batch(step: int = n) -> None:
            check_stop(reporter)
            tracker.report(step, epochs)  # at most every few seconds

        results[name] = {"metrics": evaluate(model, features, collator, device=device,
                                             batch_size=batch_size, on_batch=on_batch)}
        tracker.report(n + 1, epochs, force=True)
    for n, (name, (model, features, collator)) in enumerate(sides.items()):
        check_stop(reporter)
        results[name]["speed"] = measure_speed(model, features, collator,
                                               runs=config.benchmark_runs)
        tracker.report(n + 3, epochs, force=True)
    return results


def run_job(config: JobConfig, reporter: Reporter) -> JobResult:
    """Run a distillation job end to end; raises `Cancelled` when the reporter asks to stop."""
    if config.task in TOKEN_TASKS:
        return run_token_job(config, reporter)
    hp = config.hyperparameters
    teacher_info = inspect_model(config.teacher_path)
    check_teacher(config, teacher_info)
    set_seed(hp.seed)
    device = resolve_device(config.device)
    types = {spec.type for spec in config.losses}
    attn = "eager" if types & set(ATTENTION_LOSSES) else None

    data = prepare_data(config, teacher_info)
    if data.separate_tokenizers and types & {"hidden_mse", "attention_mse"}:
        raise ValueError("hidden_mse and attention_mse compare token positions, so they need a "
                         "student with the teacher's tokenizer")
    check_stop(reporter)
    teacher, teacher_dir = _load_teacher(config, data, device, reporter, attn)

    set_seed(hp.seed)
    student = build_student(config.student, teacher, attn_implementation=attn)
    student.to(device)  # type: ignore[arg-type]
    losses = build_losses(config.losses, config.temperature, model_info(student.config),
                          model_info(teacher.config),
                          temperature_end=config.temperature_end).to(device)
    fit_result, last_eval = distill(config, data, teacher, student, losses, device, reporter)

    results = _evaluate(config, data, teacher, student, device, reporter)

    tracker = Tracker(reporter, "export", 2)
    size_bytes = save_model(student, data.student_tokenizer, config.output_dir, data.labels)
    tracker.report(1, fit_result.epochs, force=True)
    parameters = count_parameters(student)
    entries = {
        "teacher": model_entry(results["teacher"]["metrics"], parameters=count_parameters(teacher),
                               size_bytes=weights_size(teacher_dir),
                               speed=results["teacher"]["speed"]),
        "student": model_entry(results["student"]["metrics"], parameters=parameters,
                               size_bytes=size_bytes, speed=results["student"]["speed"]),
    }
    report = build_report(entries["teacher"], entries["student"], eval_split=data.eval_split)
    write_report(config.output_dir, report, config,
                 {"epochs": fit_result.epochs, "steps": fit_result.steps, "labels": data.labels,
                  "history": fit_result.history, "evals": fit_result.evals})
    tracker.done(fit_result.epochs)
    eval_metrics = {
        **last_eval,
        "eval_accuracy": results["student"]["metrics"]["accuracy"],
        "eval_macro_f1": results["student"]["metrics"]["macro_f1"],
        "teacher_eval_accuracy": results["teacher"]["metrics"]["accuracy"],
        "teacher_eval_macro_f1": results["teacher"]["metrics"]["macro_f1"],
        "eval_split": data.eval_split,
    }
    return JobResult(
        model_dir=config.output_dir, task=config.task, parameters=parameters,
        size_bytes=size_bytes, labels=list(data.labels), report=report,
        eval_metrics=eval_metrics, train_loss=fit_result.final_loss,
    )
