"""The finished student as a Hugging Face directory: weights, config, tokenizer, report, card."""

from __future__ import annotations

import copy
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distillation.config import JobConfig
from distillation.export.cards import (
    card_for,
    quality_rows,
    retention_of,
    runtimes_section,
    time_budget_section,
)
from distillation.export.curve import CURVE_FILE, write_training_curve
from distillation.export.generations import generations_section
from distillation.export.report import weights_size
from distillation.export.selection import describe


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: Path,
    labels: list[str] | None,
) -> int:
    """Save weights (safetensors), config with label names (classifiers: `labels` not None),
    and tokenizer; returns weight bytes."""
    if output_dir.exists():
        shutil.rmtree(output_dir)  # a retried job must not leave an older run's files behind
    output_dir.mkdir(parents=True)
    if labels is not None:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {label: i for i, label in enumerate(labels)}
    model.save_pretrained(output_dir, safe_serialization=True)
    _keep_accepted_inputs(tokenizer, model).save_pretrained(output_dir)
    return weights_size(output_dir)


def _keep_accepted_inputs(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel
                          ) -> PreTrainedTokenizerBase:
    """The tokenizer, naming only the inputs the model's forward takes: a BERT tokenizer on a T5
    or GPT-2 student would hand `generate` token_type_ids, which it refuses."""
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in tokenizer.model_input_names if name in accepted]
    if names == list(tokenizer.model_input_names):
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.model_input_names = names
    tokenizer.init_kwargs["model_input_names"] = names
    return tokenizer


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _human_count(n: float) -> str:
    for unit in ("", "K", "M", "B"):
        if n < 1000 or unit == "B":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}B"


def _times(x: float | None) -> str:
    return f"{x:.2f}×" if x is not None else "n/a"


def model_card(report: dict[str, Any], config: JobConfig, training: dict[str, Any]) -> str:
    """README.md: YAML front matter, the teacher-vs-student table and the training setup."""
    t, s = report["teacher"], report["student"]
    metric = report["metric"]
    split = report.get("eval_split", "validation")
    retention = report.get("retention")
    def ratio(a: float, b: float, suffix: str = "") -> str:
        return (f"{a / b:.2f}× {suffix}".rstrip()) if b else "n/a"

    card, name = card_for(config.task), retention_of(metric)
    rows = [
        *quality_rows(report, config.task),
        ("Parameters", _human_count(t["parameters"]), _human_count(s["parameters"]),
         ratio(t["parameters"], s["parameters"], "fewer")),
        ("Size on disk", _human_bytes(t["size_bytes"]), _human_bytes(s["size_bytes"]),
         ratio(t["size_bytes"], s["size_bytes"], "smaller")),
        ("CPU latency, batch 1 (p50)", f"{t['latency_ms_p50']:.2f} ms",
         f"{s['latency_ms_p50']:.2f} ms",
         ratio(t["latency_ms_p50"], s["latency_ms_p50"], "speed-up")),
        ("CPU throughput, batch 32", f"{t['throughput_per_s']:.0f}/s",
         f"{s['throughput_per_s']:.0f}/s",
         ratio(s["throughput_per_s"], t["throughput_per_s"])),
    ]
    table = "\n".join(f"| {' | '.join(row)} |" for row in rows)
    losses = ", ".join(f"{spec.weight:g} × {spec.type}"
                       + (f" (layers {spec.layer_map})" if spec.layer_map else "")
                       for spec in config.losses)
    hp = config.hyperparameters
    arch = config.student.architecture or {}
    student = (f"`{config.student.model_path.name}`" if config.student.model_path else
               (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in arch.items())
                or "the teacher's sizes") + f"; initialised from {config.student.init}")
    curve = (f"\n## Training curve\n\n![Train loss by optimizer step; evaluation after each epoch]"
             f"({CURVE_FILE})\n" if training.get("curve") else "")
    labels = (f"- Labels: {', '.join(training['labels'])}\n" if training.get("labels")
              else "")
    vocabulary = report.get("vocabulary")
    pruned = (f"- Vocabulary: pruned from {vocabulary['pruned_from']:,} to "
              f"{vocabulary['pruned_to']:,} ids (the tokens the job's data use, and the special "
              "tokens; a word that needs any other piece reads as the unknown token)\n"
              if vocabulary else "")
    note = ("" if split == "validation" else
            "\nNo validation file was given: the figures are measured on training examples.\n")
    note += "".join(f"\n> **Warning:** {w}\n" for w in report.get("warnings", []))
    selected = (f"- Exported: the student of {describe(report['epoch_selection'])}\n"
                if report.get("epoch_selection") else "")
    return f"""---
library_name: transformers
pipeline_tag: {card.pipeline_tag}
tags:
- distillation
- {card.pipeline_tag}
---

# Student distilled from {config.teacher_name}

A {_human_count(s["parameters"])}-parameter {card.noun} distilled from
`{config.teacher_name}` ({_human_count(t["parameters"])} parameters).

## Teacher vs student

| | Teacher | Student | Student vs teacher |
|---|---|---|---|
{table}

**Retention** {f"{retention:.1%}" if retention is not None else "n/a"} of the teacher's {name} ·
**speed-up** {_times(report.get("speedup"))} · **compression** {_times(report.get("compression"))}
{note}{generations_section(report)}{runtimes_section(report)}
## Training setup

- Student: {student}
- Losses: {losses}; temperature {config.temperature:g}
- Epochs: {training.get("epochs")} ({training.get("steps")} optimizer steps), batch size
  {hp.batch_size}, learning rate {hp.learning_rate:g}, {hp.lr_scheduler} schedule, warm-up
  {hp.warmup_ratio:g}, seed {hp.seed}
- Teacher fine-tuned first: {"yes" if config.teacher_finetune else "no"}
{selected}{pruned}{labels}{time_budget_section(report)}{curve}
## Usage

```python
{card.usage}
```
"""


def write_report(
    output_dir: Path, report: dict[str, Any], config: JobConfig, training: dict[str, Any]
) -> None:
    """report.json, training_curve.png (from `training`'s history and evals) and the README.md
    model card."""
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    drawn = write_training_curve(output_dir / CURVE_FILE, training.get("history", []),
                                 training.get("evals", []))
    training = {**training, "curve": drawn}
    (output_dir / "README.md").write_text(model_card(report, config, training))
