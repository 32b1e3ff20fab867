"""jobs: the examples file a job's teacher writes prompts like (`data_generation.examples_file`)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No job before this revision could name an examples file: nothing to fill.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("examples_file_id", sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_examples_file_id_files"), "files", ["examples_file_id"], ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(batch_op.f("ix_jobs_examples_file_id"), ["examples_file_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_examples_file_id"))
        batch_op.drop_constraint(batch_op.f("fk_jobs_examples_file_id_files"), type_="foreignkey")
        batch_op.drop_column("examples_file_id")
