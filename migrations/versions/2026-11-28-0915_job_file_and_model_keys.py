"""jobs: foreign keys to the files and models a job uses, filled from the stored requests

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 09:15:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# column -> (referred table, where the id sits in the stored request)
KEYS = {
    "training_file_id": ("files", ("training_file",)),
    "validation_file_id": ("files", ("validation_file",)),
    "teacher_model_id": ("models", ("teacher", "model")),
    "student_model_id": ("models", ("student", "model")),
}


def _dig(request: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = request
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column, (table, _) in KEYS.items():
            batch_op.add_column(sa.Column(column, sa.String(length=64), nullable=True))
            batch_op.create_foreign_key(
                batch_op.f(f"fk_jobs_{column}_{table}"), table, [column], ["id"],
                ondelete="SET NULL",
            )
            batch_op.create_index(batch_op.f(f"ix_jobs_{column}"), [column], unique=False)

    # Fill the keys of existing jobs from their requests (only ids that name a stored row: a
    # built-in teacher such as all-minilm-l6-v2 has no row).
    conn = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("request", sa.JSON),
                    *(sa.column(c, sa.String) for c in KEYS))
    known = {
        table: {row[0] for row in conn.execute(sa.text(f"SELECT id FROM {table}"))}
        for table in ("files", "models")
    }
    for job_id, request in conn.execute(sa.select(jobs.c.id, jobs.c.request)).all():
        values = {}
        for column, (table, path) in KEYS.items():
            ref = _dig(request or {}, path)
            if isinstance(ref, str) and ref in known[table]:
                values[column] = ref
        if values:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column, (table, _) in KEYS.items():
            batch_op.drop_index(batch_op.f(f"ix_jobs_{column}"))
            batch_op.drop_constraint(batch_op.f(f"fk_jobs_{column}_{table}"), type_="foreignkey")
            batch_op.drop_column(column)
