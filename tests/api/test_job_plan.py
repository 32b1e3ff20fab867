"""A job request is mapped onto the core once: the plan built at creation is stored with the job
and is what each attempt runs (with that attempt's paths); a job stored before plans were runs
from its request. The request schema's sections that mirror core specs stay in step with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from app.jobs.core_config import dump_plan, job_plan, plan_job, stored_request, to_job_config
from app.jobs.schemas import (
    DataGenerationIn,
    DataIn,
    DistillationIn,
    FinetuneIn,
    GenerationIn,
    HyperparametersIn,
    Method,
)
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from distillation.config import (
    DataGenerationSpec,
    DataSpec,
    FinetuneSpec,
    GenerationSpec,
    Hyperparameters,
    OnPolicySpec,
)
from distillation.job_checks import METHODS
from distillation.plan import plan_of
from tests.factories.api import job_body, sentiment_files, upload_model_dir

JOBS = "/v1/distillation/jobs"


def _spec_defaults(spec: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(spec)}


@pytest.mark.parametrize(("schema", "spec"), [
    (FinetuneIn, FinetuneSpec), (HyperparametersIn, Hyperparameters),
    (GenerationIn, GenerationSpec),
])
def test_request_sections_have_the_core_specs_fields_and_defaults(
    schema: type[BaseModel], spec: type
) -> None:
    assert {name: f.default for name, f in schema.model_fields.items()} == _spec_defaults(spec)


def test_the_generative_fields_name_what_the_core_takes() -> None:
    assert get_args(Method) == METHODS
    assert set(DataGenerationIn.model_fields) == {
        f.name for f in dataclasses.fields(DataGenerationSpec)}
    on_policy = DistillationIn.model_fields
    assert (on_policy["lambda_"].alias, on_policy["beta"].default) == ("lambda", None)
    assert {f.name for f in dataclasses.fields(OnPolicySpec)} == {"lambda_", "beta"}


def test_the_data_section_is_the_core_data_spec() -> None:
    # DataIn is derived from DataSpec: every field, and its defaults, with the bounds on top
    assert issubclass(DataIn, DataSpec)
    assert dataclasses.asdict(DataIn()) == dataclasses.asdict(DataSpec())
    assert DataSpec(**dataclasses.asdict(DataIn(text_column="s"))) == DataSpec(text_column="s")


@pytest.fixture
def job(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> str:
    train, validation = sentiment_files(client, auth)
    teacher = str(upload_model_dir(client, auth, tiny_teacher_dir)["id"])
    body = job_body(teacher=teacher, training_file=train, validation_file=validation)
    body["data"] = {"max_seq_length": 32}
    body["distillation"] = {"temperature": 3.0, "losses": [
        {"type": "kl", "weight": 0.7}, {"type": "hidden_mse", "weight": 0.3,
                                        "layer_map": {"0": 1}}]}
    body["hyperparameters"] = {**body.get("hyperparameters", {}), "time_budget_minutes": 12.5}
    response = client.post(JOBS, headers=auth, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_the_plan_validated_at_creation_is_stored_and_run(settings: Any, job: str) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(JobRow, job)
        assert row is not None
        # Given the plan stored at creation: the request's, mapped once
        assert row.plan == dump_plan(plan_job(stored_request(row)))
        plan = job_plan(row)
        assert plan.hyperparameters.time_budget_minutes == 12.5
        assert plan.losses[1].layer_map == {0: 1} and plan.data.max_seq_length == 32

        # When an attempt builds its config, it is that plan at the attempt's paths
        row.attempts = 1
        config = to_job_config(row, session=session, settings=settings)
        assert plan_of(config) == plan
        assert config.output_dir.parent.name == "attempt-1"
        assert config.train_file.is_file() and config.student.model_path is None

        # and it is the stored plan that runs, not the request read again
        row.plan = {**row.plan, "temperature": 5.0}
        assert to_job_config(row, session=session, settings=settings).temperature == 5.0
        session.rollback()


def test_a_job_stored_without_a_plan_runs_from_its_request(settings: Any, job: str) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(JobRow, job)
        assert row is not None
        planned = to_job_config(row, session=session, settings=settings)
        row.plan = None  # as a job created before plans were stored
        assert to_job_config(row, session=session, settings=settings) == planned
        session.rollback()
