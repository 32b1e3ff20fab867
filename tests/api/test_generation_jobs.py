"""The job fields of generative distillation (`distillation.method`, `lambda`, `beta`,
`generation`, `data_generation`, `hyperparameters.time_budget_minutes`): each accepted, shown on
the job and carried into the core's config; each bad value a 400/422 naming the field, with
nothing created or queued."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from app.jobs.core_config import to_job_config
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from distillation.config import BUDGET_MAX_EPOCHS, GenerationSpec, Hyperparameters, OnPolicySpec
from tests.factories.api import assert_error, job_body, queued_messages, upload_model_dir, upload_records
from tests.factories.lm import copy_records, reverse_records, save_gpt2, save_t5

JOBS = "/v1/distillation/jobs"


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generation_models")
    return {"gpt2": save_gpt2(root / "gpt2"), "t5": save_t5(root / "t5")}


@pytest.fixture
def setup(client: Any, auth: dict[str, str], lm_dirs: dict[str, Path]) -> dict[str, Any]:
    teacher = str(upload_model_dir(client, auth, lm_dirs["gpt2"])["id"])
    train = upload_records(client, auth, copy_records(4))
    examples = upload_records(client, auth, copy_records(6), name="examples.jsonl")
    # What a user names at least: the task, the teacher, the files, the student and the method
    body = {"task": "causal-lm", "teacher": {"model": teacher}, "training_file": train,
            "student": {"architecture": {"num_layers": 1}}}
    return {"teacher": teacher, "train": train, "examples": examples, "body": body}


def _config(settings: Any, job_id: str) -> Any:
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(JobRow, job_id)
        assert row is not None
        row.attempts = 1
        config = to_job_config(row, session=session, settings=settings)
        session.rollback()
    return config


@pytest.mark.parametrize("method", ["sequence", "on-policy"])
def test_a_method_alone_gives_a_job_with_the_defaults(
    client: Any, auth: dict[str, str], settings: Any, setup: dict[str, Any], method: str,
) -> None:
    body = {**setup["body"], "distillation": {"method": method}}

    response = client.post(JOBS, headers=auth, json=body)

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["distillation"]["method"] == method
    assert (job["distillation"]["lambda"], job["distillation"]["beta"]) == (None, None)
    assert job["generation"] is None and job["data_generation"] is None
    config = _config(settings, job["id"])
    assert config.method == method and config.on_policy == OnPolicySpec(lambda_=0.5, beta=0.5)
    assert config.generation == GenerationSpec(max_new_tokens=64, temperature=0.0, top_p=1.0,
                                               num_samples=1)
    assert config.data_generation is None and config.hyperparameters.time_budget_minutes is None
    # Defaults that depend on the rest, shown on the job as they run: a student the service
    # builds learns at 1e-3, on-policy scores the unsoftened distributions.
    assert job["hyperparameters"]["learning_rate"] == config.hyperparameters.learning_rate == 1e-3
    temperature = 1.0 if method == "on-policy" else 2.0
    assert job["distillation"]["temperature"] == config.temperature == temperature


def test_defaults_that_depend_on_the_rest_never_override_what_the_request_names(
    client: Any, auth: dict[str, str], settings: Any, setup: dict[str, Any],
) -> None:
    body = {**setup["body"], "distillation": {"method": "on-policy", "temperature": 2.0},
            "hyperparameters": {"learning_rate": 5e-5}}

    response = client.post(JOBS, headers=auth, json=body)

    assert response.status_code == 201, response.text
    config = _config(settings, response.json()["id"])
    assert (config.temperature, config.hyperparameters.learning_rate) == (2.0, 5e-5)


def test_every_field_is_accepted_shown_and_carried_into_the_config(
    client: Any, auth: dict[str, str], settings: Any, setup: dict[str, Any],
) -> None:
    body = {
        **setup["body"],
        "distillation": {"method": "on-policy", "lambda": 0.3, "beta": 1.0, "temperature": 1.5},
        "generation": {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9, "num_samples": 2},
        "data_generation": {"task_description": "Copy the colour and the animal.",
                            "examples_file": setup["examples"], "num_samples": 20,
                            "temperature": 1.2},
        "hyperparameters": {"time_budget_minutes": 30},
    }

    response = client.post(JOBS, headers=auth, json=body)

    assert response.status_code == 201, response.text
    job = response.json()
    assert {k: job["distillation"][k] for k in ("method", "lambda", "beta")} == {
        "method": "on-policy", "lambda": 0.3, "beta": 1.0}
    assert job["generation"] == body["generation"]
    assert job["data_generation"] == body["data_generation"]
    assert job["hyperparameters"]["time_budget_minutes"] == 30
    config = _config(settings, job["id"])
    assert config.method == "on-policy" and config.on_policy == OnPolicySpec(0.3, 1.0)
    assert config.temperature == 1.5
    assert config.generation == GenerationSpec(16, 0.7, 0.9, 2)
    generation = config.data_generation
    assert generation is not None and generation.examples_file.is_file()
    assert (generation.task_description, generation.num_samples, generation.temperature) == (
        "Copy the colour and the animal.", 20, 1.2)
    assert config.hyperparameters.time_budget_minutes == 30

    # and the examples file, like every file a queued job reads, cannot be deleted under it
    deleted = client.delete(f"/v1/files/{setup['examples']}", headers=auth)
    assert deleted.status_code == 409 and job["id"] in deleted.json()["error"]["message"]


def test_seq2seq_jobs_are_refused_the_generative_methods(
    client: Any, auth: dict[str, str], lm_dirs: dict[str, Path],
) -> None:
    teacher = str(upload_model_dir(client, auth, lm_dirs["t5"])["id"])
    body = job_body(teacher=teacher, training_file=upload_records(client, auth, reverse_records(4)),
                    task="seq2seq", student={"architecture": {"num_layers": 1}},
                    data={"max_seq_length": 32},
                    distillation={"method": "sequence"}, generation={"max_new_tokens": 8})

    response = client.post(JOBS, headers=auth, json=body)

    # Sequence-level and on-policy distillation are built for causal language models (a prompt
    # and its answer in one sequence): a seq2seq job is told so, nothing is created.
    error = assert_error(response, 400, param="distillation.method")
    assert "causal-lm" in error["message"]


@pytest.mark.parametrize(("hyperparameters", "epochs"), [
    ({"time_budget_minutes": 45}, BUDGET_MAX_EPOCHS),  # the budget plans up to the ceiling
    ({"time_budget_minutes": 45, "epochs": 4}, 4),  # named epochs are the ceiling
    ({"epochs": 4}, 4),
    ({}, Hyperparameters().epochs),
])
def test_a_time_budget_without_epochs_shows_the_most_it_may_run(
    client: Any, auth: dict[str, str], settings: Any, setup: dict[str, Any],
    hyperparameters: dict[str, Any], epochs: int,
) -> None:
    response = client.post(JOBS, headers=auth,
                           json={**setup["body"], "hyperparameters": hyperparameters})

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["hyperparameters"]["epochs"] == epochs
    assert job["hyperparameters"]["time_budget_minutes"] == hyperparameters.get(
        "time_budget_minutes")
    assert _config(settings, job["id"]).hyperparameters.epochs == epochs


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, leaf = path.split(".")
    node = body
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return body


def _generates(setup: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"task_description": "Copy it.", "examples_file": setup["examples"], **fields}


BAD = [
    # (what, path, value or callable(setup, client, auth), status, param, code)
    ("an unknown method", "distillation.method", "beam", 422, "distillation.method", None),
    ("lambda above 1", "distillation.lambda", 1.5, 422, "distillation.lambda", None),
    ("beta below 0", "distillation.beta", -0.1, 422, "distillation.beta", None),
    ("lambda without on-policy", "distillation.lambda", 0.5, 400, "distillation.lambda",
     "unsupported_option"),
    ("beta with the sequence method", "distillation",
     {"method": "sequence", "beta": 0.5}, 400, "distillation.beta", "unsupported_option"),
    ("no new tokens", "generation.max_new_tokens", 0, 422, "generation.max_new_tokens", None),
    ("too many new tokens", "generation.max_new_tokens", 5000, 422,
     "generation.max_new_tokens", None),
    ("a negative temperature", "generation.temperature", -1, 422, "generation.temperature",
     None),
    ("a temperature above 2", "generation.temperature", 2.5, 422, "generation.temperature",
     None),
    ("top_p of 0", "generation.top_p", 0, 422, "generation.top_p", None),
    ("top_p above 1", "generation.top_p", 1.5, 422, "generation.top_p", None),
    ("no samples", "generation.num_samples", 0, 422, "generation.num_samples", None),
    ("too many samples", "generation.num_samples", 1000, 422, "generation.num_samples", None),
    ("an unknown generation field", "generation.beams", 4, 422, "generation.beams", None),
    ("an empty task description", "data_generation",
     lambda s, c, a: _generates(s, task_description=""), 422,
     "data_generation.task_description", None),
    ("no prompts to write", "data_generation", lambda s, c, a: _generates(s, num_samples=0), 422,
     "data_generation.num_samples", None),
    ("too many prompts to write", "data_generation",
     lambda s, c, a: _generates(s, num_samples=10**6), 422, "data_generation.num_samples", None),
    ("a data generation temperature above 2", "data_generation",
     lambda s, c, a: _generates(s, temperature=3), 422, "data_generation.temperature", None),
    ("no examples file", "data_generation", {"task_description": "Copy it."}, 422,
     "data_generation.examples_file", None),
    ("an examples file that does not exist", "data_generation",
     lambda s, c, a: _generates(s, examples_file="file-nope"), 400,
     "data_generation.examples_file", "file_not_found"),
    ("an examples file of purpose validation", "data_generation",
     lambda s, c, a: _generates(s, examples_file=upload_records(
         c, a, copy_records(6), purpose="validation")), 400, "data_generation.examples_file",
     "wrong_file_purpose"),
    ("fewer than 5 examples", "data_generation",
     lambda s, c, a: _generates(s, examples_file=upload_records(c, a, copy_records(4))), 400,
     "data_generation.examples_file", "too_few_examples"),
    ("examples without the task's columns", "data_generation",
     lambda s, c, a: _generates(s, examples_file=upload_records(
         c, a, [{"question": f"copy {n}"} for n in range(6)])), 400, "data.text_column",
     "missing_column"),
    ("a time budget of 0", "hyperparameters.time_budget_minutes", 0, 422,
     "hyperparameters.time_budget_minutes", None),
    ("a negative time budget", "hyperparameters.time_budget_minutes", -5, 422,
     "hyperparameters.time_budget_minutes", None),
    ("a time budget that is not a number", "hyperparameters.time_budget_minutes", "soon", 422,
     "hyperparameters.time_budget_minutes", None),
    ("a time budget over a week", "hyperparameters.time_budget_minutes", 7 * 24 * 60 + 1, 422,
     "hyperparameters.time_budget_minutes", None),
]


@pytest.mark.parametrize(("what", "path", "value", "status", "param", "code"), BAD,
                         ids=[b[0] for b in BAD])
def test_a_bad_value_is_refused_naming_the_field_and_nothing_is_queued(
    client: Any, auth: dict[str, str], setup: dict[str, Any], redis_db: int,
    what: str, path: str, value: Any, status: int, param: str, code: str | None,
) -> None:
    body = _set(setup["body"], path, value(setup, client, auth) if callable(value) else value)

    response = client.post(JOBS, headers=auth, json=body)

    assert_error(response, status, code=code, param=param)
    assert client.get(JOBS, headers=auth).json()["data"] == []
    assert queued_messages(redis_db) == 0


@pytest.mark.parametrize(("field", "value", "param"), [
    ("distillation", {"method": "sequence"}, "distillation.method"),
    ("distillation", {"method": "on-policy", "lambda": 0.5}, "distillation.method"),
    ("generation", {"max_new_tokens": 8}, "generation"),
    ("data_generation", "examples", "data_generation"),
])
def test_generation_is_refused_for_classification_naming_the_field(
    client: Any, auth: dict[str, str], setup: dict[str, Any], tiny_teacher_dir: Path,
    redis_db: int, field: str, value: Any, param: str,
) -> None:
    teacher = str(upload_model_dir(client, auth, tiny_teacher_dir)["id"])
    train = upload_records(client, auth, [{"text": "a good film", "label": "positive"},
                                          {"text": "a dull film", "label": "negative"}])
    body = job_body(teacher=teacher, training_file=train)
    body[field] = _generates(setup) if value == "examples" else value

    response = client.post(JOBS, headers=auth, json=body)

    assert_error(response, 400, code="unsupported_option", param=param)
    assert client.get(JOBS, headers=auth).json()["data"] == []
    assert queued_messages(redis_db) == 0


def test_data_generation_is_for_causal_lm(
    client: Any, auth: dict[str, str], setup: dict[str, Any], lm_dirs: dict[str, Path],
    redis_db: int,
) -> None:
    teacher = str(upload_model_dir(client, auth, lm_dirs["t5"])["id"])
    body = job_body(teacher=teacher, training_file=upload_records(client, auth, reverse_records(4)),
                    task="seq2seq", student={"architecture": {"num_layers": 1}},
                    data={"max_seq_length": 32}, data_generation=_generates(setup))

    response = client.post(JOBS, headers=auth, json=body)

    assert "causal-lm" in assert_error(response, 400, code="unsupported_option",
                                       param="data_generation")["message"]
    assert queued_messages(redis_db) == 0


def test_the_documented_example_is_a_valid_request() -> None:
    import json
    import re

    from app.jobs.core_config import plan_job
    from app.jobs.schemas import JobCreate

    page = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = page.split("## Fields for generative distillation", 1)[1].split("\n## ", 1)[0]
    example = json.loads(re.findall(r"```json\n(.*?)```", section, re.S)[0])

    plan = plan_job(JobCreate.model_validate(example))

    assert plan.method == "on-policy" and plan.data_generation is not None
    assert plan.generation.max_new_tokens == 32
    assert plan.hyperparameters.time_budget_minutes == 30
