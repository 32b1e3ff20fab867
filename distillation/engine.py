"""`run_job`: teacher in, distilled student and its report out, for every task.

One pipeline, read top to bottom; where the tasks differ it asks the job's `Task`
(`tasks.registry`), where the methods differ (token, sequence or on-policy distillation) the
job's `Method` (`methods.registry`). Stages, each reported through the `Reporter`:
`finetune_teacher` (when asked), `generate_data` (when the job asks the teacher to write
training prompts: `training.prompt_writer`; they join the training examples as prompts the
teacher answers), `generate` (when the teacher writes answers: the method's `prepare`; the
generated set, prompts and answers, is then written to `generated_file`), `cache_teacher` (when
the teacher's outputs are worth caching), `distill` (evaluating the student after every epoch),
`evaluate` (both models: the task's metrics, then CPU speed), `export` (the Hugging Face
directory, then the ONNX runtimes of a classifier, each measured: `runtime_report`; torch only
when the config's `export_runtimes` is off). The engine knows nothing of where the config came
from or where the reports go; `reporter.should_stop()` is asked before every batch and a stop
raises `Cancelled`.

Resume: checkpoints every `checkpoint_every_steps`, a fine-tuned teacher kept for the next
attempt, the teacher's answers and the teacher cache reused from the work directory, the best
epoch's student kept there too (`selection.py`: the student exported is the best epoch's unless
`select` is "last").
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel, set_seed

from distillation.config import JobConfig, JobResult, Reporter
from distillation.data.generated import Examples
from distillation.export.generations import compare_generations
from distillation.export.model_dir import save_model, write_report
from distillation.export.report import (
    build_report,
    count_parameters,
    measure_speed,
    model_entry,
    time_budget_report,
    weights_size,
)
from distillation.export.runtime_report import measure_runtimes
from distillation.export.selection import EpochSelector
from distillation.export.teacher import export_teacher
from distillation.finetune import check_finetuned_teacher, finetune_teacher
from distillation.job_checks import check_config
from distillation.layout import teacher_dir
from distillation.losses.functions import CompositeLoss
from distillation.methods.base import Method
from distillation.methods.registry import method_for
from distillation.models.info import CLASSIFICATION, inspect_model
from distillation.students.build import build_student
from distillation.students.directions import plan_student
from distillation.students.prune import prune_job_vocabulary, should_prune
from distillation.tasks import Side, Task, TaskData, get_task
from distillation.training import parallel
from distillation.training.budget import (
    BudgetPlan,
    TimeBudget,
    batch_seconds,
    load_plan,
    measure_training,
    plan_budget,
    reserve_seconds,
    save_plan,
)
from distillation.training.checkpoint import Checkpointer, teacher_finetuned
from distillation.training.hidden_cache import HiddenStateSpec, plan_hidden_cache
from distillation.training.loop import (
    FitResult,
    Tracker,
    check_stop,
    cpu_bf16,
    fit,
    optimizer_steps,
    resolve_device,
    trains_in_bf16,
)
from distillation.training.prompt_writer import (
    BATCH_SIZE,
    WrittenPrompts,
    generation_examples,
    save_generated_set,
    write_prompts,
)
from distillation.training.quantization import ProgressHooks, QuantizationAware
from distillation.training.teacher_cache import (
    TeacherCache,
    skip_reason,
    teacher_cache,
    with_example_index,
)

ATTENTION_LOSSES = ("attention_mse",)
# Evaluation prompts both models answer for the report's side-by-side section (language models).
GENERATION_PROMPTS = 64


class StageClock:
    """Wall-clock seconds per stage of this attempt, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + elapsed, 1)


def load_teacher(
    config: JobConfig, task: Task, data: TaskData, device: torch.device, reporter: Reporter,
    attn: str | None,
) -> tuple[PreTrainedModel, Path]:
    """The teacher (fine-tuned on the training file first when the job asks, unless an earlier
    attempt of the job did), frozen; and the directory its weights are in."""
    spec = config.teacher_finetune
    finetuned = teacher_dir(config.work_dir)
    if spec is not None and teacher_finetuned(finetuned):
        reporter.message("Using the teacher fine-tuned by an earlier attempt of this job.")
        teacher, save_dir = task.load_model(finetuned, data, attn=attn), finetuned
    elif spec is not None:
        teacher = task.load_model(config.teacher_path, data, attn=attn, new_head=True)
        teacher.to(device)  # type: ignore[arg-type]
        finetune_teacher(teacher, task, data, spec=spec, hp=config.hyperparameters,
                         save_dir=finetuned, device=device, reporter=reporter)
        save_dir = finetuned
    else:
        teacher = task.load_model(config.teacher_path, data, attn=attn)
        save_dir = config.teacher_path
    teacher.to(device)  # type: ignore[arg-type]
    teacher.eval().requires_grad_(False)
    return teacher, save_dir


def cache_teacher(
    config: JobConfig, task: Task, data: TaskData, teacher: PreTrainedModel,
    losses: CompositeLoss, device: torch.device, reporter: Reporter,
    refusal: str | None = None,
) -> TeacherCache | None:
    """The teacher's outputs on the training set (what the task keeps of them, and the hidden
    states the losses read where the task keeps those and they fit the budget), cached once,
    when the job asks and it pays (and the method allows: `refusal` says why it does not)."""
    hp = config.hyperparameters
    if not hp.cache_teacher:
        return None
    hidden = losses.needs_hidden_states
    reason = refusal or skip_reason(hp, needs_hidden_states=hidden and not task.caches_hidden_states,
                                    needs_attentions=losses.needs_attentions,
                                    num_examples=len(data.student.train)) \
        or task.cache_skip_reason({spec.type for spec in config.losses})
    if reason is not None:
        reporter.message(f"Not caching the teacher's outputs: {reason}.")
        return None
    hidden_states = None
    if hidden:
        shape = task.loss_shape(teacher.config)
        wanted = HiddenStateSpec(losses.teacher_hidden_states(shape.num_layers),
                                 count=shape.num_layers + 1, width=shape.hidden_size,
                                 budget=config.teacher_cache_max_bytes)
        hidden_states = plan_hidden_cache(data.student.train, wanted, reporter=reporter,
                                          same_positions=data.same_token_positions)
        if hidden_states is None:
            # The teacher runs every step for the hidden states, and its logits come out of
            # that same forward: a logit cache would only add one more teacher pass.
            return None
    return teacher_cache(teacher, data.student.train, data.student.collator,
                         task.cache_format(config, data), work_dir=config.work_dir,
                         batch_size=hp.eval_batch_size, device=device, reporter=reporter,
                         hidden_states=hidden_states)


def generate_data(config: JobConfig, data: TaskData, examples: Examples,
                  teacher: PreTrainedModel, device: torch.device,
                  reporter: Reporter) -> WrittenPrompts:
    """The `generate_data` stage: the prompts the teacher writes and keeps join the training
    examples (prompt-only, for the teacher to answer)."""
    assert config.data_generation is not None
    hp = config.hyperparameters
    written = write_prompts(teacher, data.teacher.tokenizer, config.data_generation, examples,
                            max_length=data.max_length, seed=hp.seed, work_dir=config.work_dir,
                            device=device, reporter=reporter,
                            batch_size=min(BATCH_SIZE, hp.eval_batch_size))
    short = written.summary["kept"] < written.summary["requested"]
    reporter.message(written.message(), level="warning" if short else "info",
                     data={"data_generation": written.summary})
    data.sources = {**(data.sources or {"labelled": len(data.student.train)}),
                    "generated": len(written.features)}
    data.student.train.extend(written.features)  # token tasks: the teacher's side too
    return written


@dataclass
class DistillLoss:
    """The distillation loss of one batch: the student's outputs against the teacher's, from
    the cache when there is one, else from a live forward pass; `teacher` is None unless it
    runs (no cache, or one without the hidden states the losses read). A picklable object, not
    a closure: the other ranks of a multi-device run get it by file."""

    task: str
    student: PreTrainedModel
    losses: CompositeLoss
    cache: TeacherCache | None
    teacher: PreTrainedModel | None
    teacher_prefix: str
    hidden: bool
    attentions: bool

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        task = get_task(self.task)
        flags = {"output_hidden_states": self.hidden, "output_attentions": self.attentions}
        cached = task.cached_teacher(self.cache, batch) if self.cache is not None else None
        t_out = None
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(**task.forward_inputs(self.teacher, batch,
                                                           self.teacher_prefix), **flags)
        s_out = self.student(**task.forward_inputs(self.student, batch), **flags)
        return self.losses(task.loss_inputs(batch, s_out, t_out, cached, hidden=self.hidden,
                                            attentions=self.attentions))


def plan_time_budget(
    config: JobConfig, data: TaskData, teacher: PreTrainedModel, student: PreTrainedModel,
    compute_loss: DistillLoss, features: list[Any], prepare_batch: Any, budget: TimeBudget,
    device: torch.device, reporter: Reporter,
) -> BudgetPlan:
    """The distill stage planned to fit `budget` (`training.budget`), from the speed of a few
    steps of this job's own loss and one evaluation batch of each model; an earlier attempt's
    plan when there is one."""
    task, hp = get_task(config.task), config.hyperparameters
    earlier = load_plan(config.work_dir, budget.minutes)
    if earlier is not None:
        reporter.message(f"Time budget {budget.minutes:g} min: keeping the plan of the job's "
                         f"first attempt, {earlier.epochs} epoch(s) ({earlier.steps} optimizer "
                         "steps).", data={"time_budget": earlier.summary()})
        return earlier
    speed = measure_training(
        modules=[student, compute_loss.losses], compute_loss=compute_loss, features=features,
        collator=data.student.collator, hp=hp, device=device, prepare_batch=prepare_batch,
        on_batch=lambda: check_stop(reporter),
        shared=[teacher, compute_loss.cache, data.student.collator])
    student.eval()

    def evaluation_seconds(model: PreTrainedModel, side: Side) -> float:
        """One pass over the evaluation split, from the time of its first batch."""
        batches = math.ceil(len(side.evaluation) / hp.eval_batch_size)
        return batches * batch_seconds(lambda batch: model(**task.forward_inputs(model, batch)),
                                       side.evaluation, side.collator,
                                       batch_size=hp.eval_batch_size, device=device)

    evaluation = {"student": evaluation_seconds(student, data.student),
                 "teacher": evaluation_seconds(teacher, data.teacher)}
    budget_s = budget.minutes * 60
    extra = data.sources.get("transfer", 0) + data.sources.get("augmented", 0)
    plan = plan_budget(hp=hp, budget_minutes=budget.minutes, spent_s=budget.spent(), speed=speed,
                       examples=len(features), extra_examples=extra, eval_s=evaluation["student"],
                       reserve_s=reserve_seconds(budget_s, sum(evaluation.values())))
    save_plan(config.work_dir, plan)
    reporter.message(plan.message(), level="warning" if plan.warning else "info",
                     data={"time_budget": plan.summary()})
    return plan


def runs_teacher(cache: TeacherCache | None, *, hidden: bool) -> bool:
    """Whether training runs the teacher every step: no cache, or hidden-state losses and a
    cache that does not keep the hidden states."""
    return cache is None or (hidden and cache.hidden is None)


def qad_share(config: JobConfig) -> float:
    """The share of the last optimizer steps trained quantisation-aware: the job's
    `hyperparameters.quantization_aware` when its student gets an int8 export (a classifier
    with `export_runtimes` on), else 0."""
    exported = config.task == CLASSIFICATION and config.export_runtimes
    return config.hyperparameters.quantization_aware if exported else 0.0


def qad_summary(config: JobConfig, evals: list[dict[str, Any]], epoch: int,
                steps: int) -> dict[str, Any] | None:
    """The report's `quantization_aware` entry: the share, the optimizer steps it was on for,
    and whether the exported epoch's weights went through them (the best-epoch selection
    compares fp32 evaluations, and may keep an epoch from before)."""
    share = qad_share(config)
    if share <= 0:
        return None
    qad_steps = QuantizationAware.steps_of(share, steps)
    exported_step = next((e["step"] for e in evals if e.get("epoch") == epoch), steps)
    return {"share": share, "steps": qad_steps, "optimizer_steps": steps,
            "in_exported_weights": qad_steps > 0 and exported_step > steps - qad_steps}


def distill(
    config: JobConfig, data: TaskData, teacher: PreTrainedModel, student: PreTrainedModel,
    losses: CompositeLoss, device: torch.device, reporter: Reporter,
    clock: StageClock | None = None,
    selector: EpochSelector | None = None,
    method: Method | None = None,
    budget: TimeBudget | None = None,
) -> FitResult:
    """The `cache_teacher` stage (when it pays) and the `distill` stage, with the task's metrics
    on the evaluation split after every epoch (in `FitResult.evals`, and shown to `selector`);
    resumes from the job's checkpoints. `method`: the job's (default: a fresh one of
    `config.method`). `budget`: the job's time budget, planned here before training (the plan
    is left in `budget.plan`). With `hyperparameters.quantization_aware` the student trains
    through int8-rounded Linears for that last share of the steps (`training.quantization`),
    and is evaluated, selected and returned with its plain fp32 weights."""
    task, hp = get_task(config.task), config.hyperparameters
    method = method or method_for(config.method)
    hooks = method.training(config, data, student, device)
    hidden, attentions = losses.needs_hidden_states, losses.needs_attentions
    with (clock or StageClock())("cache_teacher"):
        cache = cache_teacher(config, task, data, teacher, losses, device, reporter,
                              refusal=hooks.no_cache)
    features = with_example_index(data.student.train) if cache is not None else data.student.train
    compute_loss = DistillLoss(task=config.task, student=student, losses=losses, cache=cache,
                               teacher=teacher if runs_teacher(cache, hidden=hidden) else None,
                               teacher_prefix=data.teacher_prefix, hidden=hidden,
                               attentions=attentions)
    if budget is not None:
        budget.plan = plan_time_budget(config, data, teacher, student, compute_loss, features,
                                       hooks.prepare_batch, budget, device, reporter)
        hp = budget.plan.hyperparameters(hp)
        features = features[:budget.plan.examples]

    qad = QuantizationAware(student, qad_share(config)) if qad_share(config) > 0 else None
    if hp.quantization_aware > 0 and qad is None:
        reporter.message("Not training quantisation-aware (hyperparameters.quantization_aware): "
                         "only classifiers exported to ONNX get an int8 runtime.",
                         level="warning")

    def on_epoch_end(step: int, epoch: int) -> dict[str, Any]:
        if qad is not None:
            qad.pause()  # evaluated (and kept by the selector) as it is exported: fp32
        metrics = {"step": step, "epoch": epoch, **task.epoch_metrics(
            student, data, device=device, batch_size=hp.eval_batch_size,
            on_batch=lambda: check_stop(reporter))}
        reporter.metrics(step, metrics)
        if method_metrics := method.metrics():
            reporter.metrics(step, {"step": step, "epoch": epoch, **method_metrics})
        if selector is not None:
            selector.observe(epoch, step, metrics, student)
        return metrics

    sources = ", ".join(f"{n:,} {name}" for name, n in data.sources.items() if n)
    reporter.message(f"Distilling into a {count_parameters(student):,}-parameter student on "
                     f"{len(features):,} examples{f' ({sources})' if sources else ''} "
                     f"on {device.type}{' in bf16' if trains_in_bf16(device) else ''}: "
                     f"{method.description(config)}.",
                     data={"method": method.name})
    if qad is not None:
        total = optimizer_steps(math.ceil(len(features) / hp.batch_size), hp, hp.epochs)
        reporter.message(f"Quantisation-aware distillation: the last {qad.steps(total)} of "
                         f"{total} optimizer steps ({qad.share:.0%}) train through int8-rounded "
                         "weights and inputs, as the int8 export runs.")
    loop: dict[str, Any] = {
        "modules": [student, losses], "features": features, "collator": data.student.collator,
        "compute_loss": compute_loss, "hp": hp, "epochs": hp.epochs,
        "batch_size": hp.batch_size, "learning_rate": hp.learning_rate, "stage": "distill",
        "on_progress": losses.set_progress if qad is None else
        ProgressHooks([losses.set_progress, qad]), "prepare_batch": hooks.prepare_batch,
        "loss_rows": hooks.loss_rows}
    trained = {"student": student, "losses": losses}
    checkpoints = Checkpointer(config.work_dir, hp=hp, reporter=reporter, modules=trained)
    if hp.devices <= 1:
        result = fit(**loop, device=device, reporter=reporter, on_epoch_end=on_epoch_end,
                     checkpoints=checkpoints)
    else:
        reporter.message(f"Training on {hp.devices} {device.type} devices (DDP): "
                         f"{hp.batch_size / hp.devices:g} examples per device per batch.")
        with parallel.launch(hp.devices, device=device, work_dir=config.work_dir,
                             fit_kwargs=loop, checkpoint_modules=trained) as ranks:
            result = fit(**loop, device=ranks.device, reporter=reporter,
                         on_epoch_end=on_epoch_end, checkpoints=checkpoints, ranks=ranks)
    method.finished(reporter)
    if qad is not None:
        qad.pause()
    return result


def evaluate(
    config: JobConfig, task: Task, data: TaskData, teacher: PreTrainedModel,
    student: PreTrainedModel, device: torch.device, reporter: Reporter,
) -> dict[str, dict[str, Any]]:
    """The task's metrics on the evaluation split, then CPU speed, of both models."""
    tracker = Tracker(reporter, "evaluate", 4)
    epochs = config.hyperparameters.epochs
    sides = {"teacher": (teacher, data.teacher), "student": (student, data.student)}
    results: dict[str, dict[str, Any]] = {}
    for n, (name, (model, side)) in enumerate(sides.items()):

        def on_batch(step: int = n) -> None:
            check_stop(reporter)
            tracker.report(step, epochs)  # at most every few seconds

        results[name] = {"metrics": task.evaluate(
            model, side, data, device=device,
            batch_size=config.hyperparameters.eval_batch_size, on_batch=on_batch)}
        tracker.report(n + 1, epochs, force=True)
    for n, (name, (model, side)) in enumerate(sides.items()):
        check_stop(reporter)
        results[name]["speed"] = measure_speed(
            model, side.evaluation, side.collator, runs=config.benchmark_runs,
            inputs=partial(task.forward_inputs, model))
        tracker.report(n + 3, epochs, force=True)
    return results


def run_job(config: JobConfig, reporter: Reporter) -> JobResult:
    """Run a distillation job end to end; raises `Cancelled` when the reporter asks to stop."""
    task, hp = get_task(config.task), config.hyperparameters
    budget = TimeBudget(hp.time_budget_minutes) if hp.time_budget_minutes is not None else None
    teacher_info = inspect_model(config.teacher_path)
    check_config(config, teacher_info)  # the rules the API checked at creation, again
    method = method_for(config.method)
    set_seed(hp.seed)
    device = resolve_device(config.device)
    attn = "eager" if {spec.type for spec in config.losses} & set(ATTENTION_LOSSES) else None

    clock = StageClock()
    with clock("prepare_data"):
        data = task.prepare(config, teacher_info)
    task.check_data(config, data)
    examples = None if config.data_generation is None else generation_examples(
        config.data_generation, task=task.name, tokenizer=data.teacher.tokenizer,
        data_spec=config.data)
    check_stop(reporter)
    with clock("load_teacher" if config.teacher_finetune is None else "finetune_teacher"), \
            cpu_bf16(config.cpu_bf16):
        teacher, teacher_dir = load_teacher(config, task, data, device, reporter, attn)
        warnings = [] if config.teacher_finetune is None else check_finetuned_teacher(
            teacher, task, data, device=device, batch_size=hp.eval_batch_size, reporter=reporter)
    written = None
    if examples is not None:
        with clock("generate_data"):
            written = generate_data(config, data, examples, teacher, device, reporter)
    with clock("generate"):
        data = method.prepare(config, data, teacher, device=device, reporter=reporter)
    if method.teacher_answers is None:  # the teacher had nothing to answer
        del clock.seconds["generate"]
    # The generated set: its prompts, with the answers the teacher wrote to them.
    generated_file = None if written is None or config.generated_file is None else \
        save_generated_set(config.generated_file, written, data.student.train,
                           data.teacher.tokenizer)

    prune = should_prune(config, task)
    with clock("plan_student"):
        spec, directions, selection = plan_student(config, task, data, teacher, prune=prune,
                                                   device=device, reporter=reporter)
    set_seed(hp.seed)
    student = build_student(spec, teacher, attn_implementation=attn, task=task.name,
                            directions=directions)
    pruned = None
    if prune:  # the student's side of the data reads the new ids
        pruned = prune_job_vocabulary(config, task, data, student, reporter)
        data = pruned.data
    student.to(device)  # type: ignore[arg-type]
    losses = method.losses(config, task, student, teacher).to(device)
    selector = EpochSelector(config.work_dir, hp=hp, report_metric=task.report_metric,
                             eval_split=data.eval_split, reporter=reporter)
    with clock("distill"), cpu_bf16(config.cpu_bf16):
        fit_result = distill(config, data, teacher, student, losses, device, reporter, clock,
                             selector, method, budget)
        precision = "bf16" if trains_in_bf16(device) else "fp32"
    clock.seconds["distill"] = round(clock.seconds["distill"]
                                     - clock.seconds.get("cache_teacher", 0.0), 1)
    evals = fit_result.evals
    epoch_choice = selector.select(student, evals)  # the chosen epoch's weights, from here on

    with clock("evaluate"):
        results = evaluate(config, task, data, teacher, student, device, reporter)
        prompts = task.answer_prompts(data)[:GENERATION_PROMPTS]
        generations = compare_generations(
            teacher, student, data.student.tokenizer, prompts,
            max_new_tokens=config.generation.max_new_tokens, device=device,
            on_batch=lambda: check_stop(reporter)) if prompts else {}

    export_started = time.monotonic()
    tracker = Tracker(reporter, "export", 2)
    size_bytes = save_model(student, data.student.tokenizer, config.output_dir, data.labels)
    tracker.report(1, fit_result.epochs, force=True)
    qad = qad_summary(config, evals, epoch_choice["epoch"], fit_result.steps)
    runtimes, runtime_warnings = measure_runtimes(
        config, task, data, model_dir=config.output_dir, student=student,
        torch_metrics=results["student"]["metrics"], torch_speed=results["student"]["speed"],
        size_bytes=size_bytes, device=device, reporter=reporter, quantization_aware=qad)
    parameters = count_parameters(student)
    teacher_entry = model_entry(results["teacher"]["metrics"],
                                parameters=count_parameters(teacher),
                                size_bytes=weights_size(teacher_dir),
                                speed=results["teacher"]["speed"])
    student_entry = model_entry(results["student"]["metrics"], parameters=parameters,
                                size_bytes=size_bytes, speed=results["student"]["speed"])
    report = build_report(teacher_entry, student_entry, metric=task.report_metric,
                          eval_split=data.eval_split, method=method.summary(config))
    if data.sources:
        report["training_examples"] = data.sources
    if generations:
        report["generations"] = generations
    if written is not None:
        report["data_generation"] = written.summary
    clock.seconds["export"] = round(time.monotonic() - export_started, 1)
    # This attempt's stages; an attempt that resumed from a checkpoint counts only its own time.
    report["stage_seconds"] = clock.seconds
    if budget is not None and budget.plan is not None:
        report["time_budget"] = time_budget_report(
            budget.plan.summary(), epochs=fit_result.epochs, steps=fit_result.steps,
            stage_seconds=clock.seconds, total_seconds=budget.spent())
    if pruned is not None:
        report["vocabulary"] = pruned.summary()
    if selection is not None:
        report["student_selection"] = selection
    report["optimizer_steps"] = fit_result.steps
    report["training_precision"] = precision
    if qad is not None:
        report["quantization_aware"] = qad
    report["runtimes"] = runtimes
    report["warnings"] = warnings + runtime_warnings
    report["epoch_selection"] = epoch_choice
    write_report(config.output_dir, report, config,
                 {"epochs": fit_result.epochs, "steps": fit_result.steps, "labels": data.labels,
                  "history": fit_result.history, "evals": evals})
    exported_teacher = None if config.teacher_finetune is None else export_teacher(
        teacher_dir, config, entry=teacher_entry, metrics=results["teacher"]["metrics"],
        metric=task.report_metric, eval_split=data.eval_split, warnings=warnings)
    tracker.done(fit_result.epochs)
    selected = [e for e in evals if e.get("epoch") == epoch_choice["epoch"]]
    eval_metrics: dict[str, Any] = {**(selected[-1] if selected else {})}
    for side, prefix in (("student", "eval_"), ("teacher", "teacher_eval_")):
        eval_metrics.update({prefix + k: v for k, v in results[side]["metrics"].items()})
    eval_metrics["eval_split"] = data.eval_split
    return JobResult(
        model_dir=config.output_dir, task=config.task, parameters=parameters,
        size_bytes=size_bytes, labels=list(data.labels) if data.labels is not None else None,
        report=report, eval_metrics=eval_metrics, train_loss=fit_result.final_loss,
        teacher=exported_teacher, generated_file=generated_file,
    )
