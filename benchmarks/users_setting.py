"""The setting users have, through the API only: SST-2 with 8,000 labelled rows, 30,000 other
training sentences as `transfer_file`, the dev set as validation, `teacher.finetune.epochs: 2`,
`student.target: {"compression": 4}` and everything else default; scored on a test split the job
never sees (2,000 further rows of SST-2's train file, disjoint from the other two).

It starts the service as an operator does (its own Postgres database, `distill api`, one
`distill worker`), uploads the three files, creates the job, follows it to its end, downloads the
student and the fine-tuned teacher the job registered, and scores both on the test split and the
dev set (torch, batch 64) and times each at batch 1 (median of 200 single sentences, one thread).
The job's wall-clock time counts from its creation to `succeeded`.

    DISTILL_SST2_DIR=../shared/data/sst2 python benchmarks/users_setting.py

`--hyperparameters '{"epochs": 8}'` (or `--body` for any other field) runs a variant of the
defaults; the row records exactly what the request held.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sst2_quality import read_tsv  # noqa: E402
from benchmarks.stack import (  # noqa: E402
    REDIS,
    Services,
    free_port,
    fresh_database,
    machine,
    open_api,
)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def split(sst2: Path, *, labelled: int, transfer: int, test: int, seed: int
          ) -> dict[str, list[dict[str, Any]]]:
    """Disjoint labelled / transfer / test rows of SST-2's train file (seeded shuffle)."""
    rows = [{"sentence": r["sentence"], "label": int(r["label"])}
            for r in read_tsv(sst2 / "train.tsv")]
    random.Random(seed).shuffle(rows)
    dev = [{"content": r["content"], "label": int(r["label"])} for r in read_tsv(sst2 / "dev.tsv")]
    return {"train": rows[:labelled],
            "transfer": [{"sentence": r["sentence"]} for r in
                         rows[labelled:labelled + transfer]],
            "test": rows[labelled + transfer:labelled + transfer + test],
            "dev": dev}


def download(api: Any, model_id: str, out: Path) -> Path:
    response = api.get(f"/v1/models/{model_id}/download", timeout=600)
    response.raise_for_status()
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(out / model_id, filter="data")
    folders = [p.parent for p in (out / model_id).rglob("config.json")]
    return min(folders, key=lambda p: len(p.parts))


def measure(model_dir: Path, splits: dict[str, tuple[list[str], list[int]]],
            latency_texts: list[str]) -> dict[str, Any]:
    """The model (loaded once): its accuracy on each split (torch, batch 64), its batch-1
    latency (median of 200 single sentences after 20 of warm-up, one thread; none without
    `latency_texts`) and its parameters."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    # the job's labels are 0/1; a model whose label names are those numbers maps them back
    to_label = {int(i): int(name) if str(name).isdigit() else int(i)
                for name, i in (model.config.label2id or {}).items()}
    result: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
    with torch.inference_mode():
        for name, (texts, labels) in splits.items():
            correct = 0
            for start in range(0, len(texts), 64):
                batch = tokenizer(texts[start:start + 64], padding=True, truncation=True,
                                  max_length=128, return_tensors="pt")
                predicted = model(**batch).logits.argmax(-1).tolist()
                correct += sum(to_label.get(p, p) == y
                               for p, y in zip(predicted, labels[start:start + 64], strict=True))
            result[name] = round(correct / len(texts), 4)
        times = []
        for i, text in enumerate(latency_texts[:220]):
            inputs = tokenizer(text, return_tensors="pt")
            start_s = time.perf_counter()
            model(**inputs)
            if i >= 20:  # warm-up
                times.append(time.perf_counter() - start_s)
    if times:
        result["latency_ms"] = round(statistics.median(times) * 1000, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2-dir", type=Path, default=Path(os.environ.get(
        "DISTILL_SST2_DIR", ROOT.parent / "shared" / "data" / "sst2")))
    parser.add_argument("--labelled", type=int, default=8000)
    parser.add_argument("--transfer", type=int, default=30000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--hyperparameters", type=json.loads, default={},
                        help="JSON merged into the request's hyperparameters.")
    parser.add_argument("--body", type=json.loads, default={},
                        help="JSON merged into the request (top-level fields).")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "users_setting.json")
    parser.add_argument("--timeout-minutes", type=float, default=120)
    args = parser.parse_args()

    data = split(args.sst2_dir, labelled=args.labelled, transfer=args.transfer, test=args.test,
                 seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="users-setting-"))
    with fresh_database("users_setting") as database_url:
        env = {**os.environ, "DISTILL_DATABASE_URL": database_url,
               "DISTILL_BROKER_URL": REDIS,
               "DISTILL_DATA_DIR": str(work / "data"), "PYTHONPATH": str(ROOT)}
        services = Services(env, work, free_port())
        try:
            api = open_api(services, "users")
            services.start_worker("worker")
            ids = {}
            for name, purpose, rows in (("train", "train", data["train"]),
                                        ("transfer", "unlabeled", data["transfer"]),
                                        ("dev", "validation", data["dev"])):
                response = api.post("/v1/files", data={"purpose": purpose},
                                    files={"file": (f"{name}.jsonl", jsonl(rows))})
                response.raise_for_status()
                ids[name] = response.json()["id"]
            body: dict[str, Any] = {
                "task": "sequence-classification",
                "teacher": {"model": "all-minilm-l6-v2", "finetune": {"epochs": 2}},
                "student": {"target": {"compression": 4}},
                "training_file": ids["train"], "validation_file": ids["dev"],
                "transfer_file": ids["transfer"],
                "data": {"text_column": "sentence", "validation_text_column": "content",
                         "label_column": "label"},
                **args.body,
            }
            if args.hyperparameters:
                body["hyperparameters"] = {**body.get("hyperparameters", {}),
                                           **args.hyperparameters}
            created = time.monotonic()
            response = api.post("/v1/distillation/jobs", json=body)
            if response.status_code != 201:
                raise SystemExit(f"job refused: {response.status_code} {response.text}")
            job_id = response.json()["id"]
            print(f"job {job_id} created: {json.dumps(body)}", flush=True)
            last = ""
            while True:
                job = api.get(f"/v1/distillation/jobs/{job_id}").json()
                progress = job.get("progress") or {}
                line = f"{job['status']} {progress.get('stage')} {progress.get('step')}/" \
                       f"{progress.get('total_steps')}"
                if line != last:
                    print(f"{(time.monotonic() - created) / 60:6.1f} min  {line}", flush=True)
                    last = line
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() - created > args.timeout_minutes * 60:
                    raise SystemExit(f"job {job_id} still {job['status']} after "
                                     f"{args.timeout_minutes} min")
                time.sleep(10)
            minutes = round((time.monotonic() - created) / 60, 1)
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job.get('error')}")
            report = api.get(f"/v1/models/{job['result_model']}").json().get("report") or {}
            student_dir = download(api, job["result_model"], work / "models")
            teacher_dir = download(api, job["teacher_model"], work / "models")
        finally:
            services.stop()

    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "machine": machine(),
                              "request": body, "job_minutes": minutes,
                              "stage_seconds": report.get("stage_seconds"),
                              "training_precision": report.get("training_precision"),
                              "student_selection": report.get("student_selection"),
                              "report": {k: report.get(k) for k in ("retention", "speedup",
                                                                     "compression")},
                              "hyperparameters": job.get("hyperparameters")}
    splits = {"test": ([r["sentence"] for r in data["test"]], [r["label"] for r in data["test"]]),
              "dev": ([r["content"] for r in data["dev"]], [r["label"] for r in data["dev"]])}
    teacher = measure(teacher_dir, splits, splits["test"][0])
    student = measure(student_dir, splits, splits["test"][0])
    for name in splits:
        result[name] = {"teacher": teacher[name], "student": student[name],
                        "retention": round(student[name] / teacher[name], 4)}
    result["latency_ms_p50"] = {"teacher": teacher["latency_ms"], "student": student["latency_ms"],
                                "speedup": round(teacher["latency_ms"] / student["latency_ms"], 2)}
    result["parameters"] = {"teacher": teacher["parameters"], "student": student["parameters"],
                            "compression": round(teacher["parameters"] / student["parameters"], 2)}
    print(json.dumps({k: result[k] for k in ("job_minutes", "test", "dev", "latency_ms_p50",
                                             "parameters")}, indent=1))
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else []
    args.out.write_text(json.dumps({"runs": [*runs, result]}, indent=2) + "\n")
    print(f"row appended to {args.out}")


if __name__ == "__main__":
    main()
