"""A language model brought as a GGUF file, distilled on-policy through the API on chat prompts
it has never seen, and the student downloaded and loaded as a user would: the whole generative
path on a tiny model (the real SmolLM2 run is `distill demo --chat` and benchmarks/lm_quality.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import download_model, job_body, upload_records
from tests.factories.chat import save_trained_chat_llama
from tests.factories.faults import job_events
from tests.factories.gguf import write_llama_gguf
from tests.factories.lm import WORDS, chat_records

JOBS = "/v1/distillation/jobs"


@pytest.fixture(scope="module")
def teacher_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_trained_chat_llama(tmp_path_factory.mktemp("gguf_chat") / "hf")
    return write_llama_gguf(folder, folder.parent / "chat.gguf")


def test_an_uploaded_gguf_teacher_is_distilled_on_policy_and_its_student_answers_like_it(
    client: Any, auth: dict[str, str], settings: Any, teacher_gguf: Path, tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.runner import execute_job

    # Given a teacher uploaded as a .gguf file, and chat prompts with no answers
    uploaded = client.post("/v1/models", headers=auth, files={
        "file": ("chat.gguf", teacher_gguf.read_bytes(), "application/octet-stream")})
    assert uploaded.status_code == 201, uploaded.text
    teacher = uploaded.json()["id"]
    train = upload_records(client, auth, chat_records(48, seed=11, answered=False))
    unseen = chat_records(8, seed=12, answered=False)
    validation = upload_records(client, auth, unseen, purpose="validation", name="dev.jsonl")
    body = job_body(teacher=teacher, training_file=train, validation_file=validation,
                    task="causal-lm", student={"architecture": {"num_layers": 1}},
                    distillation={"method": "on-policy", "lambda": 0.5, "beta": 0.5},
                    generation={"max_new_tokens": 6}, data={"max_seq_length": 48},
                    hyperparameters={"epochs": 6, "batch_size": 8, "learning_rate": 1e-2})

    # When the job runs
    created = client.post(JOBS, headers=auth, json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert execute_job(job_id, settings=settings) == "succeeded"

    # Then the teacher answered the prompts, the student sampled its own answers and was scored
    events = job_events(lambda url: client.get(url, headers=auth), job_id)
    messages = [e["message"] for e in events]
    assert any(m.startswith("The teacher wrote 56 answers") for m in messages), messages
    job = client.get(f"{JOBS}/{job_id}", headers=auth).json()
    model = client.get(f"/v1/models/{job['result_model']}", headers=auth).json()
    report = model["report"]
    assert report["method"]["name"] == "on-policy"
    assert report["method"]["student_samples"]["answers"] > 0
    generations = report["generations"]
    assert generations["prompts"] == len(unseen)
    # ... and it answers the unseen prompts in its teacher's words (the tiny teacher answers with
    # the copy task's words; an untrained student writes newlines and stray pieces)
    for example in generations["examples"]:
        words = example["student"].split()
        assert words and set(words) <= set(WORDS), generations["examples"]
    assert generations["rougeL_vs_teacher"] > 0.0

    # The download loads with from_pretrained and answers as predict does
    folder = download_model(client, auth, model["id"], tmp_path / "student")
    student = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages_in = unseen[0]["messages"]
    ids = tokenizer.apply_chat_template(messages_in, add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = student.generate(**ids, max_new_tokens=6, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
    local = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    served = client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                         json={"messages": messages_in, "max_new_tokens": 6})
    assert served.status_code == 200, served.text
    assert served.json()["data"][0]["text"].strip() == local.strip()
