"""`distill demo --chat`: a real chat model distilled for one narrow job, over HTTP as a user would.

Serve → create a key → upload SST-2 sentences as chat prompts ("Is this review positive or
negative? Reply in one short sentence.", no answers) → distil the built-in SmolLM2-135M-Instruct
into a student the service sizes 4x smaller: the teacher writes an answer to every prompt, then
on-policy distillation (the student answers, the teacher scores each of its tokens) → follow the
job → download the student → ask the served student three new reviews → print the teacher's and
the student's answers side by side and the report.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rich.table import Table

from distill_cli.demo import (
    _check,
    _follow,
    console,
    demo_service,
    download_model,
    sst2_folder,
)
from distill_cli.report import report_table

QUESTION = "Is this review positive or negative? Reply in one short sentence."
REVIEWS = [
    "a gorgeous , witty , seductive movie .",
    "the acting is wooden and the plot is a mess .",
    "an utterly charming and hilarious film .",
]


def chat_prompt(sentence: str) -> dict[str, Any]:
    """One prompt record: the question and the review, as a user's turn with no answer yet."""
    return {"messages": [{"role": "user", "content": f"{QUESTION}\n\n{sentence}"}]}


def sentences(path: Path, n: int, *, seed: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    column = lines[0].split("\t").index("sentence" if "sentence" in lines[0] else "content")
    body = [line.split("\t")[column] for line in lines[1:]]
    random.Random(seed).shuffle(body)
    return body[:n]


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def chat_demo_job(train_id: str, dev_id: str, epochs: int) -> dict[str, Any]:
    """The chat demo's job: the built-in SmolLM2 teacher, a student 4x smaller, on-policy
    distillation on the teacher's own answers."""
    return {
        "task": "causal-lm",
        "teacher": {"model": "smollm2-135m-instruct"},
        "student": {"target": {"compression": 4}},
        "training_file": train_id,
        "validation_file": dev_id,
        "distillation": {"method": "on-policy", "lambda": 0.5, "beta": 0.5},
        "generation": {"max_new_tokens": 24},
        "data": {"max_seq_length": 256},
        # A student this far from its teacher at the start (see the sizing event) needs a larger
        # step than the default 5e-5 to learn the job in minutes: measured in lm_quality.py.
        "hyperparameters": {"epochs": epochs, "batch_size": 8, "learning_rate": 1e-3,
                            "seed": 42},
        "metadata": {"source": "distill demo --chat"},
    }


def review_label(answer: str) -> str | None:
    """"positive" or "negative": whichever the answer says first (None: neither)."""
    text = answer.lower()
    found = [(text.find(word), word) for word in ("positive", "negative") if word in text]
    return min(found)[1] if found else None


def generations_table(report: dict[str, Any], rows: int = 8) -> Table:
    """The report's answers of the teacher and the student to the same validation prompts."""
    gen = report.get("generations") or {}
    table = Table(title="The teacher's and the student's answers to validation prompts")
    for column in ("review", "teacher", "student"):
        table.add_column(column, overflow="fold")
    for example in gen.get("examples", [])[:rows]:
        # The prompt as decoded: … the question, a blank line, the review, the answer's header.
        review = example["prompt"].split(QUESTION, 1)[-1].strip().split("\n", 1)[0]
        table.add_row(review, example["teacher"], example["student"])
    examples = gen.get("examples", [])
    agree = [review_label(e["teacher"]) == review_label(e["student"]) for e in examples]
    if gen:
        table.caption = (
            f"ROUGE-L vs teacher {gen['rougeL_vs_teacher']:.1f} · first line as the teacher's "
            f"{gen['first_line_match']:.0%} · same label as the teacher "
            f"{sum(agree)}/{len(agree)} shown · student perplexity on the teacher's answers "
            f"{gen['student_perplexity_on_teacher']:.2f}")
    return table


def run_chat_demo(*, prompts: int, validation: int, epochs: int, sst2_dir: Path | None,
                  port: int) -> None:
    sst2 = sst2_folder(sst2_dir)
    console.rule("[bold]distill demo --chat")
    with demo_service(port) as client:
        train_records = [chat_prompt(s) for s in sentences(sst2 / "train.tsv", prompts, seed=0)]
        dev_records = [chat_prompt(s) for s in sentences(sst2 / "dev.tsv", validation, seed=1)]
        train = _check(client.post("/v1/files", data={"purpose": "train"}, files={
            "file": ("review-prompts.jsonl", _jsonl(train_records), "application/jsonl")}))
        dev = _check(client.post("/v1/files", data={"purpose": "validation"}, files={
            "file": ("review-prompts-dev.jsonl", _jsonl(dev_records), "application/jsonl")}))
        console.print(f"Uploaded {train['id']} ({train['num_records']:,} chat prompts from SST-2 "
                      f"training sentences, no answers) and {dev['id']} "
                      f"({dev['num_records']} from the dev set).")
        job = _check(client.post("/v1/distillation/jobs",
                                 json=chat_demo_job(train["id"], dev["id"], epochs)))
        console.print(f"Submitted {job['id']}: smollm2-135m-instruct → a student 4x smaller; "
                      "the teacher answers every prompt, then on-policy distillation "
                      f"(lambda 0.5, beta 0.5), {job['hyperparameters']['epochs']} epoch(s).")
        job = _follow(client, job["id"])
        if job["status"] != "succeeded":
            raise SystemExit(f"job {job['status']}: {job['error']}")
        model = _check(client.get(f"/v1/models/{job['result_model']}"))
        download_model(client, model["id"])
        console.print(generations_table(model.get("report") or {}))
        console.print("The served student on three new reviews (POST /v1/models/{id}/predict "
                      "with messages):")
        for review in REVIEWS:
            answer = _check(client.post(f"/v1/models/{model['id']}/predict", json={
                **chat_prompt(review), "max_new_tokens": 24}))["data"][0]["text"]
            console.print(f"  {review}\n    → {answer.strip()}")
        console.print(report_table(model))


__all__ = ["chat_demo_job", "chat_prompt", "review_label", "run_chat_demo", "sentences"]
