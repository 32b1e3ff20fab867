"""Every slice's tables, imported so that `Base.metadata` is complete (Alembic, tests)."""

from app.auth.tables import ApiKeyRow
from app.files.tables import FileRow
from app.jobs.tables import IdempotencyKeyRow, JobEventRow, JobRow
from app.kit.db import Base
from app.models.tables import ModelRow
from app.workers.tables import WorkerRow

__all__ = ["ApiKeyRow", "Base", "FileRow", "IdempotencyKeyRow", "JobEventRow", "JobRow", "ModelRow",
           "WorkerRow"]
