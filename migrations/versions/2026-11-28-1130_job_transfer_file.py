"""jobs: the transfer file (unlabelled texts the teacher labels) a job reads

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # No job before this revision could name a transfer file: nothing to fill.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transfer_file_id", sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_transfer_file_id_files"), "files", ["transfer_file_id"], ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(batch_op.f("ix_jobs_transfer_file_id"), ["transfer_file_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_transfer_file_id"))
        batch_op.drop_constraint(batch_op.f("fk_jobs_transfer_file_id_files"), type_="foreignkey")
        batch_op.drop_column("transfer_file_id")
