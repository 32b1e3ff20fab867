"""Causal-LM and seq2seq jobs through the API: a job runs end to end and its student generates
through predict; columns are checked per task; a student of another kind or vocabulary, and
losses the pair cannot serve, are refused at creation with nothing queued."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import assert_error, job_body, queued_messages, upload_model_dir, upload_records
from tests.factories.lm import copy_records, permute_vocab, reverse_records, save_gpt2, save_t5

JOBS = "/v1/distillation/jobs"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path) -> dict[str, Path]:
    """Teachers and would-be students, saved once for the module."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForSequenceClassification

    root = tmp_path_factory.mktemp("lm_models")
    bert_other_ids = root / "bert_other_ids"
    shutil.copytree(tiny_teacher_dir, bert_other_ids)
    torch.manual_seed(0)
    t5_classifier = root / "t5_classifier"
    sizes: dict[str, Any] = {"vocab_size": 30522, "d_model": 16, "d_ff": 32, "d_kv": 8,
                             "num_layers": 1, "num_heads": 2, "num_labels": 2,
                             "decoder_start_token_id": 0}
    T5ForSequenceClassification(T5Config(**sizes)).save_pretrained(t5_classifier,
                                                                   safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(t5_classifier)
    return {
        "gpt2": save_gpt2(root / "gpt2"),
        "t5": save_t5(root / "t5"),
        "gpt2_small_vocab": save_gpt2(root / "gpt2_small_vocab", vocab_size=12),
        "gpt2_other_ids": permute_vocab(save_gpt2(root / "gpt2_other_ids")),
        "bert_other_ids": permute_vocab(bert_other_ids),
        "t5_classifier": t5_classifier,
    }


def _upload(client: Any, auth: dict[str, str], model_dirs: dict[str, Path], name: str) -> str:
    return str(upload_model_dir(client, auth, model_dirs[name])["id"])


def _lm_body(task: str, teacher: str, train: str, validation: str | None = None,
             **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "task": task, "student": {"architecture": {"num_layers": 1}, "init": "teacher"},
        **overrides, "data": {"max_seq_length": 32, **overrides.get("data", {})},
    }
    return job_body(teacher=teacher, training_file=train, validation_file=validation, **values)


def _download_and_load(client: Any, auth: dict[str, str], model_id: str, dest: Path
                       ) -> tuple[Any, Any]:
    """The model's download, extracted as a user would, loaded with the Auto classes."""
    import io
    import tarfile

    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    with client.stream("GET", f"/v1/models/{model_id}/download", headers=auth) as response:
        assert response.status_code == 200
        data = b"".join(response.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    auto = (AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(dest).is_encoder_decoder
            else AutoModelForCausalLM)
    return auto.from_pretrained(dest).eval(), AutoTokenizer.from_pretrained(dest)


def _generate(loaded: tuple[Any, Any], prompt: str, new_tokens: int) -> str:
    """Greedy generation as a user writes it; only the new tokens, decoded."""
    model, tokenizer = loaded
    inputs = tokenizer([prompt], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    if not model.config.is_encoder_decoder:
        ids = ids[:, inputs["input_ids"].shape[1]:]
    return str(tokenizer.decode(ids[0], skip_special_tokens=True)).strip()


def _assert_nothing_created(client: Any, auth: dict[str, str], redis_db: int) -> None:
    assert client.get(JOBS, headers=auth).json()["data"] == []
    assert queued_messages(redis_db) == 0


def test_causal_lm_job_runs_and_its_student_generates(
    client: Any, auth: dict[str, str], settings: Any, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from worker.runner import execute_job

    teacher = _upload(client, auth, model_dirs, "gpt2")
    train = upload_records(client, auth, copy_records(32, seed=1))
    validation = upload_records(client, auth, copy_records(8, seed=2), purpose="validation",
                                name="dev.jsonl")
    body = _lm_body("causal-lm", teacher, train, validation,
                    hyperparameters={"epochs": 2, "batch_size": 8, "learning_rate": 5e-3})

    created = client.post(JOBS, headers=auth, json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert execute_job(job_id, settings=settings) == "succeeded"

    job = client.get(f"{JOBS}/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded" and job["metrics"]["eval"]["perplexity"] > 1.0
    assert "teacher_perplexity" in job["metrics"]["eval"]
    model = client.get(f"/v1/models/{job['result_model']}", headers=auth).json()
    assert model["task"] == "causal-lm" and model["labels"] is None
    assert model["report"]["metric"] == "perplexity" and model["report"]["retention"] > 0
    predicted = client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                            json={"inputs": ["copy red cat", "copy sun"], "max_new_tokens": 4})
    assert predicted.status_code == 200, predicted.text
    served = [item["text"] for item in predicted.json()["data"]]
    assert [type(text) for text in served] == [str, str]

    # And the download loads with from_pretrained and generates what predict served (greedy)
    student = _download_and_load(client, auth, model["id"], tmp_path / "student")
    assert _generate(student, "copy red cat", 4) == served[0].strip()


def test_seq2seq_job_with_a_narrower_student_runs_and_its_download_generates(
    client: Any, auth: dict[str, str], settings: Any, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # A student narrower than its teacher, initialised from it, is planned by projecting the
    # teacher's hidden states: an encoder-decoder has two stacks, and planning once called it
    # without decoder inputs (a failed job)
    from worker.runner import execute_job

    teacher = _upload(client, auth, model_dirs, "t5")
    train = upload_records(client, auth, reverse_records(32, seed=1))
    validation = upload_records(client, auth, reverse_records(8, seed=2), purpose="validation",
                                name="dev.jsonl")
    body = _lm_body("seq2seq", teacher, train, validation,
                    student={"architecture": {"num_layers": 1, "hidden_size": 16}, "init": "teacher"},
                    hyperparameters={"epochs": 1, "batch_size": 8})

    created = client.post(JOBS, headers=auth, json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert execute_job(job_id, settings=settings) == "succeeded", client.get(
        f"{JOBS}/{job_id}/events", headers=auth).text

    job = client.get(f"{JOBS}/{job_id}", headers=auth).json()
    model = client.get(f"/v1/models/{job['result_model']}", headers=auth).json()
    assert model["task"] == "seq2seq" and model["report"]["metric"] in {"rougeL", "bleu", "perplexity"}
    predicted = client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                            json={"inputs": ["red cat sun"], "max_new_tokens": 4})
    assert predicted.status_code == 200, predicted.text
    served = predicted.json()["data"][0]["text"]

    # And the download loads with from_pretrained, 16 wide, and generates what predict served
    student = _download_and_load(client, auth, model["id"], tmp_path / "student")
    assert student[0].config.d_model == 16 and student[0].config.num_layers == 1
    assert _generate(student, "red cat sun", 4) == served.strip()


def test_seq2seq_job_with_remapped_columns_is_accepted(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path]
) -> None:
    teacher = _upload(client, auth, model_dirs, "t5")
    rows = [{"article": r["source"], "summary": r["target"]} for r in reverse_records(8)]
    train = upload_records(client, auth, rows)
    body = _lm_body("seq2seq", teacher, train,
                    data={"source_column": "article", "target_column": "summary"})

    response = client.post(JOBS, headers=auth, json=body)

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["task"] == "seq2seq" and job["status"] == "queued"
    assert (job["data"]["source_column"], job["data"]["target_column"]) == ("article", "summary")


def test_columns_are_checked_per_task(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], redis_db: int
) -> None:
    gpt2, t5 = (_upload(client, auth, model_dirs, name) for name in ("gpt2", "t5"))
    questions = upload_records(client, auth, [{"question": "copy red"}])
    pairs = upload_records(client, auth, copy_records(4))
    no_target = upload_records(client, auth, [{"source": "red cat"}], purpose="validation")
    sources = upload_records(client, auth, reverse_records(4))

    causal = client.post(JOBS, headers=auth, json=_lm_body("causal-lm", gpt2, questions))
    seq2seq = client.post(JOBS, headers=auth, json=_lm_body("seq2seq", t5, pairs))
    validation = client.post(JOBS, headers=auth,
                             json=_lm_body("seq2seq", t5, sources, no_target))

    assert "prompt + completion" in assert_error(causal, 400, code="missing_column",
                                                 param="data.text_column")["message"]
    assert_error(seq2seq, 400, code="missing_column", param="data.source_column")
    assert_error(validation, 400, code="missing_column", param="data.target_column")
    _assert_nothing_created(client, auth, redis_db)


@pytest.mark.parametrize(("task", "teacher", "student", "message"), [
    ("seq2seq", "t5", "gpt2", "needs a student of the teacher's kind"),
    ("causal-lm", "gpt2", "t5", "needs a student of the teacher's kind"),
    ("causal-lm", "gpt2", "gpt2_small_vocab", "vocabulary of 12 tokens"),
    ("causal-lm", "gpt2", "gpt2_other_ids", "maps tokens to ids differently"),
])
def test_a_student_of_another_kind_or_vocabulary_is_refused(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], redis_db: int,
    task: str, teacher: str, student: str, message: str,
) -> None:
    teacher_id, student_id = (_upload(client, auth, model_dirs, name) for name in (teacher, student))
    records = copy_records(4) if task == "causal-lm" else reverse_records(4)
    body = _lm_body(task, teacher_id, upload_records(client, auth, records),
                    student={"model": student_id})

    response = client.post(JOBS, headers=auth, json=body)

    error = assert_error(response, 400, code="incompatible_student", param="student.model")
    assert message in error["message"]
    _assert_nothing_created(client, auth, redis_db)


@pytest.mark.parametrize(("task", "student", "losses", "param", "message"), [
    ("causal-lm", None, [{"type": "kl"}, {"type": "logit"}], "distillation.losses[1].type",
     "not available for causal-lm"),
    ("sequence-classification", "bert_other_ids", [{"type": "hidden_mse"}],
     "distillation.losses[0].type", "tokenises differently"),
    ("sequence-classification", "t5_classifier", [{"type": "kl"}, {"type": "cosine"}],
     "distillation.losses[1].type", "two models of one kind"),
])
def test_losses_the_pair_cannot_serve_are_refused(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], tiny_teacher_dir: Path,
    redis_db: int, task: str, student: str | None, losses: list[dict[str, Any]], param: str,
    message: str,
) -> None:
    if task == "causal-lm":
        teacher = _upload(client, auth, model_dirs, "gpt2")
        body = _lm_body(task, teacher, upload_records(client, auth, copy_records(4)))
    else:
        teacher = str(upload_model_dir(client, auth, tiny_teacher_dir)["id"])
        body = job_body(teacher=teacher, training_file=upload_records(
            client, auth, [{"text": "a good film", "label": "positive"}]))
    if student is not None:
        body["student"] = {"model": _upload(client, auth, model_dirs, student)}
    body["distillation"] = {"temperature": 2.0, "losses": losses}

    response = client.post(JOBS, headers=auth, json=body)

    assert message in assert_error(response, 400, code="invalid_loss", param=param)["message"]
    _assert_nothing_created(client, auth, redis_db)


def test_an_encoder_only_base_teacher_cannot_teach_a_causal_lm(
    client: Any, auth: dict[str, str], redis_db: int
) -> None:
    body = _lm_body("causal-lm", "all-minilm-l6-v2", upload_records(client, auth, copy_records(4)))
    body["teacher"]["finetune"] = {"epochs": 1}

    response = client.post(JOBS, headers=auth, json=body)

    assert_error(response, 400, code="incompatible_teacher", param="teacher.model")
    _assert_nothing_created(client, auth, redis_db)


def test_transfer_file_is_for_classification(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], redis_db: int
) -> None:
    gpt2 = _upload(client, auth, model_dirs, "gpt2")
    train = upload_records(client, auth, copy_records(4))
    texts = upload_records(client, auth, [{"text": "red cat"}], purpose="unlabeled")

    transfer = client.post(JOBS, headers=auth,
                           json={**_lm_body("causal-lm", gpt2, train), "transfer_file": texts})
    augmented = client.post(JOBS, headers=auth, json={
        **_lm_body("causal-lm", gpt2, train), "augmentation": {"methods": ["mask"]}})

    assert "sequence-classification" in assert_error(
        transfer, 400, code="unsupported_option", param="transfer_file")["message"]
    assert_error(augmented, 400, code="unsupported_option", param="augmentation")
    _assert_nothing_created(client, auth, redis_db)


def test_quantisation_aware_distillation_is_for_classification(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], redis_db: int
) -> None:
    gpt2 = _upload(client, auth, model_dirs, "gpt2")
    train = upload_records(client, auth, copy_records(4))
    body = _lm_body("causal-lm", gpt2, train)

    asked = client.post(JOBS, headers=auth, json={
        **body, "hyperparameters": {"quantization_aware": 0.25}})
    out_of_range = client.post(JOBS, headers=auth, json={
        **body, "hyperparameters": {"quantization_aware": 1.5}})

    assert "sequence-classification" in assert_error(
        asked, 400, code="unsupported_option",
        param="hyperparameters.quantization_aware")["message"]
    assert out_of_range.status_code == 422
    assert "quantization_aware" in out_of_range.text
    _assert_nothing_created(client, auth, redis_db)


def test_a_language_model_student_may_be_sized_to_a_target(
    client: Any, auth: dict[str, str], model_dirs: dict[str, Path], redis_db: int
) -> None:
    gpt2, t5 = (_upload(client, auth, model_dirs, name) for name in ("gpt2", "t5"))
    causal = upload_records(client, auth, copy_records(4))
    pairs = upload_records(client, auth, reverse_records(4))
    target = {"target": {"compression": 2}}

    responses = [client.post(JOBS, headers=auth, json={**_lm_body(task, teacher, train),
                                                       "student": target})
                 for task, teacher, train in (("causal-lm", gpt2, causal),
                                              ("seq2seq", t5, pairs))]

    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    assert queued_messages(redis_db) == 2
