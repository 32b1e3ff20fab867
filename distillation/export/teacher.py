"""The fine-tuned teacher as a model of its own: a Hugging Face directory (config, safetensors
weights, tokenizer) with a report of the teacher's own figures and a model card, exported beside
the student so the service can register, serve and hand out both.

The teacher the `finetune_teacher` stage saved in the work directory is copied (it stays there
for a resumed attempt), without the marker that tells such an attempt it is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from distillation.config import ExportedTeacher, JobConfig
from distillation.export.cards import card_for, metric_name
from distillation.export.report import weights_size
from distillation.layout import FINETUNED_MARKER


def teacher_report(entry: dict[str, Any], *, metric: str, eval_split: str, config: JobConfig,
                   finetuned: Path, warnings: list[str]) -> dict[str, Any]:
    """{"metric", "eval_split", "teacher": its figures, "finetune": how it was trained,
    "warnings"}: the shape of a student's report, less what compares it with a teacher."""
    spec = config.teacher_finetune
    assert spec is not None
    try:
        done = json.loads((finetuned / FINETUNED_MARKER).read_text())
    except (OSError, ValueError):
        done = {}
    return {
        "metric": metric,
        "eval_split": eval_split,
        "teacher": entry,
        "finetune": {"base_model": config.teacher_name, "epochs": done.get("epochs"),
                     "steps": done.get("steps"), "learning_rate": spec.learning_rate,
                     "min_steps": spec.min_steps,
                     "batch_size": spec.batch_size or config.hyperparameters.batch_size},
        "warnings": list(warnings),
    }


def teacher_card(report: dict[str, Any], config: JobConfig) -> str:
    """README.md of the fine-tuned teacher: what it is, its figures, how it was trained."""
    t, ft = report["teacher"], report["finetune"]
    card = card_for(config.task)
    split = report.get("eval_split", "validation")
    metrics = [report["metric"], *(m for m in card.metrics if m != report["metric"] and m in t)]
    rows = [(f"{metric_name(m)} ({split})" if n == 0 else metric_name(m), f"{t[m]:.4f}")
            for n, m in enumerate(metrics)]
    rows += [("Parameters", f"{t['parameters']:,}"),
             ("Size on disk", f"{t['size_bytes'] / 1e6:.1f} MB"),
             ("CPU latency, batch 1 (p50)", f"{t['latency_ms_p50']:.2f} ms"),
             ("CPU throughput, batch 32", f"{t['throughput_per_s']:.0f}/s")]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    warnings = "".join(f"\n> **Warning:** {w}\n" for w in report.get("warnings", []))
    note = ("" if split == "validation" else
            "\nNo validation file was given: the figures are measured on training examples.\n")
    return f"""---
library_name: transformers
pipeline_tag: {card.pipeline_tag}
tags:
- fine-tuned
- distillation-teacher
- {card.pipeline_tag}
---

# {ft["base_model"]}, fine-tuned as a teacher

`{ft["base_model"]}` fine-tuned on the job's training file before it taught the job's student:
a {t["parameters"]:,}-parameter {card.noun}.

| | This model |
|---|---|
{table}
{note}{warnings}
## Training setup

- Fine-tuned for {ft["epochs"]} epoch(s), {ft["steps"]} optimizer steps (`min_steps`
  {ft["min_steps"]}), batch size {ft["batch_size"]}, learning rate {ft["learning_rate"]:g}, seed
  {config.hyperparameters.seed}

## Usage

```python
{card.usage}
```
"""


def export_teacher(finetuned: Path, config: JobConfig, *, entry: dict[str, Any],
                   metrics: dict[str, float], metric: str, eval_split: str,
                   warnings: list[str]) -> ExportedTeacher:
    """Copy the fine-tuned teacher to `config.teacher_output_dir` with report.json and README.md.

    `entry` is the teacher's side of the student's report (`report.model_entry`), `metrics` the
    evaluate stage's figures behind it."""
    report = teacher_report(entry, metric=metric, eval_split=eval_split, config=config,
                            finetuned=finetuned, warnings=warnings)
    out = config.teacher_output_dir
    if out.exists():
        shutil.rmtree(out)  # a retried job must not leave an older run's files behind
    out.mkdir(parents=True)
    for path in finetuned.iterdir():
        if path.is_file() and path.name != FINETUNED_MARKER:
            shutil.copy2(path, out / path.name)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(teacher_card(report, config))
    return ExportedTeacher(
        model_dir=out, parameters=entry["parameters"], size_bytes=weights_size(out),
        report=report,
        eval_metrics={**{"teacher_eval_" + k: v for k, v in metrics.items()},
                      "eval_split": eval_split})
