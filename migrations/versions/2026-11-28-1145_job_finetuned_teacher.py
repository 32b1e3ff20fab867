"""jobs: the fine-tuned teacher a succeeded job registered as a model (`teacher_model`)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 11:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null for every job so far: none registered its fine-tuned teacher before this revision.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finetuned_teacher_id", sa.String(length=64),
                                      nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_finetuned_teacher_id_models"), "models",
            ["finetuned_teacher_id"], ["id"], ondelete="SET NULL",
        )
        batch_op.create_index(batch_op.f("ix_jobs_finetuned_teacher_id"),
                              ["finetuned_teacher_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_finetuned_teacher_id"))
        batch_op.drop_constraint(batch_op.f("fk_jobs_finetuned_teacher_id_models"),
                                 type_="foreignkey")
        batch_op.drop_column("finetuned_teacher_id")
