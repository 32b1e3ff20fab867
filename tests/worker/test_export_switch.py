"""`DISTILL_EXPORT_RUNTIMES` reaches the training core: the worker's job config carries it (on by
default, off in tests: `tests/conftest.py`); so do `DISTILL_TEACHER_CACHE_MAX_BYTES` and
`DISTILL_CPU_BF16`. What
the core does with the first is tested in `tests/core/test_engine.py` (off: torch only) and
`tests/worker/test_queue.py` (on: a real worker's job is exported to ONNX), with the second in
`tests/core/test_hidden_cache.py`, the third in `tests/core/test_precision.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.jobs.core_config import to_job_config
from app.jobs.tables import JobRow
from app.kit.db import session_scope
from app.settings import Settings
from distillation.config import JobConfig
from tests.factories.api import job_body, sentiment_files, upload_model_dir


def test_the_setting_reaches_the_job_config(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path,
) -> None:
    # Given a job
    train, validation = sentiment_files(client, auth)
    teacher = str(upload_model_dir(client, auth, tiny_teacher_dir)["id"])
    response = client.post("/v1/distillation/jobs", headers=auth,
                           json=job_body(teacher=teacher, training_file=train,
                                         validation_file=validation))
    assert response.status_code == 201, response.text

    # Then its config exports the runtimes as the worker's settings say (the default: on)
    assert Settings.model_fields["export_runtimes"].default is True
    assert JobConfig.__dataclass_fields__["export_runtimes"].default is True
    assert settings.export_runtimes is False  # the tests' own default
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(JobRow, response.json()["id"])
        assert row is not None
        for exported in (False, True):
            config = to_job_config(row, session=session,
                                   settings=settings.model_copy(update={"export_runtimes": exported}))
            assert config.export_runtimes is exported
        # and the teacher cache's budget for hidden states too (the same default: 8 GiB)
        assert (Settings.model_fields["teacher_cache_max_bytes"].default
                == JobConfig.__dataclass_fields__["teacher_cache_max_bytes"].default == 8 * 1024**3)
        config = to_job_config(row, session=session,
                               settings=settings.model_copy(update={"teacher_cache_max_bytes": 5}))
        assert config.teacher_cache_max_bytes == 5
        # and the CPU's training precision: auto (the core asks the CPU), on, off
        assert Settings.model_fields["cpu_bf16"].default == "auto"
        assert JobConfig.__dataclass_fields__["cpu_bf16"].default is None
        for setting, core in (("auto", None), ("on", True), ("off", False)):
            config = to_job_config(row, session=session,
                                   settings=settings.model_copy(update={"cpu_bf16": setting}))
            assert config.cpu_bf16 is core
