"""`run_token_job`: `run_job` for the token-level tasks, causal LM and seq2seq.

Same stages as classification (`finetune_teacher` when asked, `cache_teacher` when the teacher's
outputs are worth caching, `distill`, `evaluate`, `export`), and the same resume: checkpoints
every `checkpoint_every_steps`, a fine-tuned teacher kept for the next attempt, the teacher cache
reused from the work directory. The student reads the teacher's tokenizer, and every loss term
sees one row of logits per target token (`tasks.token_loss_inputs`). The teacher cache keeps the
top-k tokens per target position, so with it `kl` is the top-k KL, and jobs with `reverse_kl`,
`jsd` or `mse_logits` run the teacher every step instead (`lm_cache` says why). Evaluation:
perplexity after every epoch; at the end perplexity, plus ROUGE-L and BLEU of greedy generations
for seq2seq, for both models. Speed in the report is one forward pass over whole examples
(prompt and completion; source, and the target as teacher-forced decoder input), not
generation, at batch 1 and batch 32.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoConfig, PreTrainedModel, set_seed

from distillation.cache import EXAMPLE_INDEX, with_example_index
from distillation.checkpoint import Checkpointer, mark_teacher_finetuned, teacher_finetuned
from distillation.config import SUPPORTED_TASKS, JobConfig, JobResult, Reporter
from distillation.export import save_model, write_report
from distillation.inspect import BASE_TASK, ModelInfo, inspect_model
from distillation.lm_cache import teacher_topk_cache, token_skip_reason
from distillation.lm_data import TokenData, prepare_token_data
from distillation.lm_eval import evaluate_tokens, perplexity
from distillation.losses import CompositeLoss, build_losses
from distillation.pairing import check_pair_losses, check_token_pair, vocab_fingerprint
from distillation.report import (
    build_report,
    count_parameters,
    measure_speed,
    model_entry,
    weights_size,
)
from distillation.students import build_student
from distillation.tasks import (
    CAUSAL_LM,
    SEQ2SEQ,
    loss_shape,
    model_batch,
    model_class,
    target_rows,
    token_loss_inputs,
)
from distillation.topk_cache import TopKCache
from distillation.training import (
    FitResult,
    Tracker,
    check_stop,
    fit,
    resolve_device,
)

# The metric the report leads with, per task.
REPORT_METRIC = {CAUSAL_LM: "perplexity", SEQ2SEQ: "rougeL"}


def check_token_job(config: JobConfig, teacher: ModelInfo) -> None:
    """ValueError unless the teacher, the student and the losses suit the token-level task
    (the same checks the API makes at job creation)."""
    task = config.task
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"task {task!r} is not supported yet; "
                         f"supported: {', '.join(SUPPORTED_TASKS)}")
    if teacher.task == BASE_TASK and config.teacher_finetune is None:
        raise ValueError(f"the teacher {config.teacher_name!r} is a base {teacher.model_type} "
                         f"model with no {task} head: set teacher_finetune to train it on the "
                         "training file first")
    if teacher.task not in (BASE_TASK, task):
        raise ValueError(f"the teacher is a {teacher.task} model, not {task}")
    student_dir = config.student.model_path
    student = inspect_model(student_dir) if student_dir is not None else None
    problems = check_token_pair(
        task, teacher, student, teacher_vocab=vocab_fingerprint(config.teacher_path),
        student_vocab=vocab_fingerprint(student_dir) if student_dir is not None else None,
    ) + check_pair_losses(task, config.losses, teacher, student)
    if problems:
        raise ValueError("; ".join(message for _, message in problems))


def _token_ce(model: PreTrainedModel, batch: dict[str, Tensor], task: str) -> Tensor:
    logits = model(**model_batch(batch, task), use_cache=False).logits
    rows, labels = target_rows(logits, batch["labels"], shift=task == CAUSAL_LM)
    return F.cross_entropy(rows.float(), labels)


def _load_teacher(
    config: JobConfig, data: TokenData, device: torch.device, reporter: Reporter,
    attn: str | None,
) -> tuple[PreTrainedModel, Path]:
    """The teacher (trained on the training file's targets first when the job asks, unless an
    earlier attempt of the job did), and the directory its weights are in."""
    kwargs: dict[str, Any] = {"attn_implementation": attn} if attn else {}
    spec = config.teacher_finetune
    finetuned = config.work_dir / "teacher"
    reuse = spec is not None and teacher_finetuned(finetuned)
    if reuse:
        reporter.message("Using the teacher fine-tuned by an earlier attempt of this job.")
    save_dir = finetuned if reuse else config.teacher_path
    teacher = model_class(config.task).from_pretrained(str(save_dir), **kwargs)
    teacher.to(device)
    if spec is not None and not reuse:
        reporter.message(f"Fine-tuning the teacher on {len(data.train)} examples "
                         f"for {spec.epochs} epoch(s).")
        fitted = fit(modules=[teacher], features=data.train, collator=data.collator,
                     compute_loss=lambda batch: (_token_ce(teacher, batch, config.task), {}),
                     hp=config.hyperparameters, epochs=spec.epochs,
                     batch_size=spec.batch_size or config.hyperparameters.batch_size,
                     learning_rate=spec.learning_rate, device=device, reporter=reporter,
                     stage="finetune_teacher", loss_key="finetune_loss")
        save_dir = finetuned
        save_dir.mkdir(parents=True, exist_ok=True)
        teacher.save_pretrained(save_dir, safe_serialization=True)
        data.tokenizer.save_pretrained(save_dir)
        mark_teacher_finetuned(save_dir, epochs=fitted.epochs, steps=fitted.steps)
        # Name it where it now lives, as a resumed attempt that loads it from there will: the
        # teacher cache's header includes the name, so the next attempt reuses the cache.
        teacher.config._name_or_path = str(save_dir)
    teacher.eval().requires_grad_(False)
    return teacher, save_dir


def _teacher_cache(
    config: JobConfig, data: TokenData, teacher: PreTrainedModel, losses: CompositeLoss,
    device: torch.device, reporter: Reporter,
) -> TopKCache | None:
    """The teacher's top-k rows on the training set, cached once, when the job asks and it pays."""
    hp = config.hyperparameters
    if not hp.cache_teacher:
        return None
    reason = token_skip_reason({spec.type for spec in config.losses}, hp,
                               needs_hidden_states=losses.needs_hidden_states,
                               needs_attentions=losses.needs_attentions,
                               num_examples=len(data.train))
    if reason is not None:
        reporter.message(f"Not caching the teacher's outputs: {reason}.")
        return None
    return teacher_topk_cache(teacher, data.train, data.collator, task=config.task,
                              k=hp.teacher_cache_top_k, work_dir=config.work_dir,
                              batch_size=hp.eval_batch_size, device=device, reporter=reporter)


def distill(
    config: JobConfig, data: TokenData, teacher: PreTrainedModel, student: PreTrainedModel,
    losses: CompositeLoss, device: torch.device, reporter: Reporter,
) -> FitResult:
    """The `cache_teacher` stage (when it pays) and the `distill` stage, with perplexity on the
    evaluation split every epoch (in `FitResult.evals`); resumes from the job's checkpoints."""
    task, hp = config.task, config.hyperparameters
    hidden, attentions = losses.needs_hidden_states, losses.needs_attentions
    cache = _teacher_cache(config, data, teacher, losses, device, reporter)
    features = with_example_index(data.train) if cache is not None else data.train

    def compute_loss(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        inputs = {**model_batch(batch, task), "use_cache": False,
                  "output_hidden_states": hidden, "output_attentions": attentions}
        if cache is not None:  # no hidden states or attentions wanted: the top-k rows will do
            rows = cache.lookup(batch[EXAMPLE_INDEX]).to(device)
            return losses(token_loss_inputs(task, batch, student(**inputs), None, hidden=False,
                                            attentions=False, teacher_topk=rows))
        with torch.no_grad():
            t_out = teacher(**inputs)
        s_out = student(**inputs)
        return losses(token_loss_inputs(task, batch, s_out, t_out, hidden=hidden,
                                        attentions=attentions))

    def on_epoch_end(step: int, epoch: int) -> dict[str, Any]:
        ppl = perplexity(student, data.eval, data.collator, task=task, device=device,
                         batch_size=hp.eval_batch_size, on_batch=lambda: check_stop(reporter))
        metrics = {"eval_perplexity": ppl["perplexity"]}
        reporter.metrics(step, {"step": step, "epoch": epoch, **metrics})
        return metrics

    reporter.message(f"Distilling into a {count_parameters(student):,}-parameter student on "
                     f"{len(data.train)} examples ({device.type}).")
    return fit(
        modules=[student, losses], features=features, collator=data.collator,
        compute_loss=compute_loss, hp=hp, epochs=hp.epochs, batch_size=hp.batch_size,
        learning_rate=hp.learning_rate, device=device, reporter=reporter, stage="distill",
        on_epoch_end=on_epoch_end, on_progress=losses.set_progress,
        checkpoints=Checkpointer(config.work_dir, hp=hp, reporter=reporter,
                                 modules={"student": student, "losses": losses}),
    )


def _evaluate(
    config: JobConfig, data: TokenData, teacher: PreTrainedModel, student: PreTrainedModel,
    device: torch.device, reporter: Reporter,
) -> dict[str, dict[str, Any]]:
    """The task's metrics on the evaluation split, then CPU speed, of both models."""
    task = config.task
    tracker = Tracker(reporter, "evaluate", 4)
    epochs = config.hyperparameters.epochs
    sides = {"teacher": teacher, "student": student}
    results: dict[str, dict[str, Any]] = {}
    for n, (name, model) in enumerate(sides.items()):

        def on_batch(step: int = n) -> None:
            check_stop(reporter)
            tracker.report(step, epochs)

        results[name] = {"metrics": evaluate_tokens(
            model, data.tokenizer, data.eval, data.collator, data.eval_pairs, task=task,
            device=device, batch_size=config.hyperparameters.eval_batch_size,
            max_length=data.max_length, on_batch=on_batch,
        )}
        tracker.report(n + 1, epochs, force=True)
    for n, (name, model) in enumerate(sides.items()):
        check_stop(reporter)
        results[name]["speed"] = measure_speed(
            model, data.eval, data.collator, runs=config.benchmark_runs,
            inputs=lambda batch: {**model_batch(batch, task), "use_cache": False},
        )
        tracker.report(n + 3, epochs, force=True)
    return results


def run_token_job(config: JobConfig, reporter: Reporter) -> JobResult:
    """Distil a causal-LM or seq2seq teacher end to end; raises `Cancelled` on request."""
    task, hp = config.task, config.hyperparameters
    check_token_job(config, inspect_model(config.teacher_path))
    set_seed(hp.seed)
    device = resolve_device(config.device)
    attn = "eager" if any(spec.type == "attention_mse" for spec in config.losses) else None

    data = prepare_token_data(config, AutoConfig.from_pretrained(str(config.teacher_path)))
    check_stop(reporter)
    teacher, teacher_dir = _load_teacher(config, data, device, reporter, attn)
    set_seed(hp.seed)
    student = build_student(config.student, teacher, attn_implementation=attn, task=task)
    student.to(device)  # type: ignore[arg-type]
    # A sequence's first position means little to a causal model or a decoder: cosine pools
    # the mean of the compared positions instead.
    specs = [replace(spec, pooling="mean") if spec.type == "cosine" else spec
             for spec in config.losses]
    losses = build_losses(specs, config.temperature, loss_shape(student.config),
                          loss_shape(teacher.config),
                          temperature_end=config.temperature_end).to(device)
    fit_result = distill(config, data, teacher, student, losses, device, reporter)
    evals = fit_result.evals

    results = _evaluate(config, data, teacher, student, device, reporter)

    tracker = Tracker(reporter, "export", 2)
    size_bytes = save_model(student, data.tokenizer, config.output_dir, None)
    tracker.report(1, fit_result.epochs, force=True)
    parameters = count_parameters(student)
    teacher_entry = model_entry(results["teacher"]["metrics"],
                                parameters=count_parameters(teacher),
                                size_bytes=weights_size(teacher_dir),
                                speed=results["teacher"]["speed"])
    student_entry = model_entry(results["student"]["metrics"], parameters=parameters,
                                size_bytes=size_bytes, speed=results["student"]["speed"])
    report = build_report(teacher_entry, student_entry, metric=REPORT_METRIC[task],
                          eval_split=data.eval_split)
    write_report(config.output_dir, report, config,
                 {"epochs": fit_result.epochs, "steps": fit_result.steps,
                  "history": fit_result.history, "evals": evals})
    tracker.done(fit_result.epochs)
    eval_metrics: dict[str, Any] = {**(evals[-1] if evals else {})}
    for side, prefix in (("student", "eval_"), ("teacher", "teacher_eval_")):
        eval_metrics.update({prefix + k: v for k, v in results[side]["metrics"].items()})
    eval_metrics["eval_split"] = data.eval_split
    return JobResult(
        model_dir=config.output_dir, task=task, parameters=parameters, size_bytes=size_bytes,
        labels=None, report=report, eval_metrics=eval_metrics, train_loss=fit_result.final_loss,
    )
