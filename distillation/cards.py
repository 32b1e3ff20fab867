"""What the model card says per task: its pipeline tag, what the model is, the quality rows of the
teacher-vs-student table, and how to use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillation.report import LOWER_IS_BETTER

METRIC_NAMES = {"accuracy": "Accuracy", "macro_f1": "Macro-F1", "perplexity": "Perplexity",
                "rougeL": "ROUGE-L", "bleu": "BLEU"}


@dataclass(frozen=True)
class TaskCard:
    pipeline_tag: str
    noun: str  # "A 1.2M-parameter <noun> distilled from …"
    metrics: tuple[str, ...]  # the quality rows, in order, where the report has them
    usage: str


CARDS = {
    "sequence-classification": TaskCard(
        pipeline_tag="text-classification", noun="text classifier",
        metrics=("macro_f1",),
        usage="""from transformers import pipeline

classifier = pipeline("text-classification", model="path/to/this/directory")
classifier("a moving, funny film")""",
    ),
    "causal-lm": TaskCard(
        pipeline_tag="text-generation", noun="causal language model",
        metrics=("perplexity",),
        usage="""from transformers import pipeline

generator = pipeline("text-generation", model="path/to/this/directory")
generator("Once upon a time", max_new_tokens=32, do_sample=False)""",
    ),
    "seq2seq": TaskCard(
        pipeline_tag="text2text-generation", noun="sequence-to-sequence model",
        metrics=("rougeL", "bleu", "perplexity"),
        usage="""from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
model = AutoModelForSeq2SeqLM.from_pretrained("path/to/this/directory")
inputs = tokenizer(["a text to transform"], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**inputs, max_new_tokens=32),
                             skip_special_tokens=True))""",
    ),
}


def card_for(task: str) -> TaskCard:
    return CARDS.get(task, CARDS["sequence-classification"])


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " ").capitalize())


def quality_rows(report: dict[str, Any], task: str) -> list[tuple[str, str, str, str]]:
    """(name, teacher, student, student vs teacher) for the report's metric and the task's
    other metrics; lower-is-better metrics (perplexity) are kept as teacher / student."""
    t, s = report["teacher"], report["student"]
    split = report.get("eval_split", "validation")
    names = [report["metric"]] + [m for m in card_for(task).metrics
                                  if m != report["metric"] and m in t and m in s]
    rows = []
    for n, metric in enumerate(names):
        a, b = (t[metric], s[metric]) if metric in LOWER_IS_BETTER else (s[metric], t[metric])
        label = f"{metric_name(metric)} ({split})" if n == 0 else metric_name(metric)
        rows.append((label, f"{t[metric]:.4f}", f"{s[metric]:.4f}",
                     f"{a / b:.1%} retained" if b else "n/a"))
    return rows


def retention_of(metric: str) -> str:
    """What the retention figure is a share of, for the card's summary line."""
    name = metric_name(metric)
    name = name.lower() if name[1:].islower() else name
    return f"{name} (teacher ÷ student)" if metric in LOWER_IS_BETTER else name
