"""Migrations on real Postgres: revision 0002 fills the jobs' file and model keys from the
requests stored before it, 0004 adds the key to a job's fine-tuned teacher, 0007 the job's plan
(null for older jobs, planned from their request), 0008 the key to its examples file; each
downgrades cleanly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from app.kit.migrate import downgrade, upgrade
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def empty_db() -> Iterator[str]:
    name = f"distill_migr_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_0002_fills_job_keys_from_stored_requests(empty_db: str) -> None:
    # Given a database at revision 0001 with a job that names two files, an uploaded teacher
    # and a built-in student model, as the first release stored it
    upgrade(empty_db, "0001")
    engine = create_engine(empty_db)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants VALUES ('tn-1', 'acme', 0)"))
        for file_id in ("file-train", "file-dev"):
            conn.execute(text(
                "INSERT INTO files (id, tenant_id, filename, purpose, format, bytes, "
                "num_records, columns, path, created_at) VALUES "
                "(:id, 'tn-1', 'f.jsonl', 'train', 'jsonl', 1, 1, '[]', '/x', 0)"), {"id": file_id})
        conn.execute(text(
            "INSERT INTO models (id, tenant_id, task, source, parameters, size_bytes, path, "
            "created_at) VALUES ('model-t', 'tn-1', 'sequence-classification', 'uploaded', 1, "
            "1, '/x', 0)"))
        conn.execute(text(
            "INSERT INTO jobs (id, tenant_id, status, task, request, progress, metrics, "
            "created_at, attempts) VALUES ('job-1', 'tn-1', 'queued', 'sequence-classification', "
            "CAST(:request AS JSON), '{}', '{}', 0, 0)"),
            {"request": '{"training_file": "file-train", "validation_file": "file-dev", '
                        '"teacher": {"model": "model-t"}, '
                        '"student": {"model": "all-minilm-l6-v2"}}'})

    # When the migrations run to the head
    upgrade(empty_db)

    # Then the keys point at the stored rows, and the built-in (no row) is null
    with engine.connect() as conn:
        keys = conn.execute(text(
            "SELECT training_file_id, validation_file_id, teacher_model_id, student_model_id "
            "FROM jobs")).one()
    assert tuple(keys) == ("file-train", "file-dev", "model-t", None)

    # and a file deleted after its job finished leaves the job with a null key
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'succeeded'"))
        conn.execute(text("DELETE FROM files WHERE id = 'file-dev'"))
        assert conn.execute(text("SELECT validation_file_id FROM jobs")).scalar_one() is None

    downgrade(empty_db, "0001")
    with engine.connect() as conn:
        columns = {row[0] for row in conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'"))}
    assert "training_file_id" not in columns
    engine.dispose()


def test_0004_adds_the_jobs_finetuned_teacher_key(empty_db: str) -> None:
    # Given a database at revision 0003 with a succeeded job and its student
    upgrade(empty_db, "0003")
    engine = create_engine(empty_db)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants VALUES ('tn-1', 'acme', 0)"))
        conn.execute(text(
            "INSERT INTO jobs (id, tenant_id, status, task, request, progress, metrics, "
            "created_at, attempts, result_model) VALUES ('job-1', 'tn-1', 'succeeded', "
            "'sequence-classification', '{}', '{}', '{}', 0, 1, 'model-s')"))

    # When the migrations run to the head, the job has no fine-tuned teacher
    upgrade(empty_db)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT finetuned_teacher_id FROM jobs")).scalar_one() is None
        # and one registered later is a key to the models table, nulled when it is deleted
        conn.execute(text(
            "INSERT INTO models (id, tenant_id, task, source, source_job, parameters, "
            "size_bytes, path, created_at) VALUES ('model-t', 'tn-1', 'sequence-classification', "
            "'finetuned', 'job-1', 1, 1, '/x', 0)"))
        conn.execute(text("UPDATE jobs SET finetuned_teacher_id = 'model-t'"))
    with engine.begin() as conn:
        with pytest.raises(IntegrityError, match="foreign key"), conn.begin_nested():
            conn.execute(text("UPDATE jobs SET finetuned_teacher_id = 'model-none'"))
        conn.execute(text("DELETE FROM models WHERE id = 'model-t'"))
        assert conn.execute(text("SELECT finetuned_teacher_id FROM jobs")).scalar_one() is None

    downgrade(empty_db, "0003")
    with engine.connect() as conn:
        columns = {row[0] for row in conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'"))}
    assert "finetuned_teacher_id" not in columns and "transfer_file_id" in columns
    engine.dispose()


def test_0006_adds_job_resources_and_the_workers_table(empty_db: str) -> None:
    # Given a job queued before routing existed
    upgrade(empty_db, "0005")
    engine = create_engine(empty_db)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants VALUES ('tn-1', 'acme', 0)"))
        conn.execute(text(
            "INSERT INTO jobs (id, tenant_id, status, task, request, progress, metrics, "
            "created_at, attempts) VALUES ('job-1', 'tn-1', 'queued', "
            "'sequence-classification', '{}', '{}', '{}', 0, 0)"))

    # When the migrations run to the head, it has no estimate and no queue (the default one)
    upgrade(empty_db)
    with engine.begin() as conn:
        row = conn.execute(text("SELECT estimated_memory_bytes, queue FROM jobs")).one()
        assert tuple(row) == (None, None)
        # and estimates past 2 GiB fit, as do worker rows
        conn.execute(text("UPDATE jobs SET estimated_memory_bytes = 85899345920, queue = 'l'"))
        conn.execute(text(
            "INSERT INTO workers VALUES ('w-1', 'host', 'cuda', 4, 85899345920, '[\"l\"]', 0, 0)"))

    downgrade(empty_db, "0005")
    with engine.connect() as conn:
        columns = {row[0] for row in conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'"))}
        tables = {row[0] for row in conn.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"))}
    assert "queue" not in columns and "workers" not in tables
    engine.dispose()


def test_0007_adds_the_jobs_plan_and_an_older_job_is_planned_from_its_request(
    empty_db: str,
) -> None:
    from app.jobs.core_config import job_plan
    from app.jobs.tables import JobRow

    # Given a job queued before plans were stored
    upgrade(empty_db, "0006")
    engine = create_engine(empty_db)
    request = ('{"task": "sequence-classification", "teacher": {"model": "all-minilm-l6-v2", '
               '"finetune": {"epochs": 1}}, "student": {"architecture": {"num_layers": 2}}, '
               '"training_file": "file-train", "hyperparameters": {"epochs": 2}}')
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants VALUES ('tn-1', 'acme', 0)"))
        conn.execute(text(
            "INSERT INTO jobs (id, tenant_id, status, task, request, progress, metrics, "
            "created_at, attempts) VALUES ('job-1', 'tn-1', 'queued', "
            "'sequence-classification', CAST(:request AS JSON), '{}', '{}', 0, 0)"),
            {"request": request})

    # When the migrations run to the head, it has no plan, and its plan is its request's
    upgrade(empty_db)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT request, plan FROM jobs")).one()
    assert row.plan is None
    plan = job_plan(JobRow(request=row.request, plan=None))
    assert plan.student.architecture == {"num_layers": 2}
    assert plan.hyperparameters.epochs == 2 and plan.teacher_finetune is not None

    downgrade(empty_db, "0006")
    with engine.connect() as conn:
        columns = {row[0] for row in conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'"))}
    assert "plan" not in columns and "queue" in columns
    engine.dispose()


def test_0008_adds_the_jobs_examples_file_key(empty_db: str) -> None:
    # Given a job from before data generation, at revision 0007
    upgrade(empty_db, "0007")
    engine = create_engine(empty_db)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants VALUES ('tn-1', 'acme', 0)"))
        conn.execute(text(
            "INSERT INTO jobs (id, tenant_id, status, task, request, progress, metrics, "
            "created_at, attempts) VALUES ('job-1', 'tn-1', 'succeeded', 'causal-lm', '{}', "
            "'{}', '{}', 0, 1)"))

    # When the migrations run to the head, it names no examples file
    upgrade(empty_db)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT examples_file_id FROM jobs")).scalar_one() is None
        # and one named later is a key to the files table, nulled when the file is deleted
        conn.execute(text(
            "INSERT INTO files (id, tenant_id, filename, purpose, format, bytes, num_records, "
            "columns, path, created_at) VALUES ('file-ex', 'tn-1', 'f.jsonl', 'train', 'jsonl', "
            "1, 6, '[]', '/x', 0)"))
        conn.execute(text("UPDATE jobs SET examples_file_id = 'file-ex'"))
    with engine.begin() as conn:
        with pytest.raises(IntegrityError, match="foreign key"), conn.begin_nested():
            conn.execute(text("UPDATE jobs SET examples_file_id = 'file-none'"))
        conn.execute(text("DELETE FROM files WHERE id = 'file-ex'"))
        assert conn.execute(text("SELECT examples_file_id FROM jobs")).scalar_one() is None

    downgrade(empty_db, "0007")
    with engine.connect() as conn:
        columns = {row[0] for row in conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'"))}
    assert "examples_file_id" not in columns and "plan" in columns
    engine.dispose()
