"""Distillation jobs (the queue of record), their events and idempotency keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.kit.db import Base


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(64))
    # The validated request as the user sent it (teacher, student, files, data, losses, ...).
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The core's plan of it (`distillation.plan.JobPlan`: the config less its paths), built
    # once at creation; null for jobs created before plans were stored (read from `request`).
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The stored files and models the request names (null for a built-in teacher, or once the
    # file or model is deleted after the job finished): "is it in use" asks these keys.
    training_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"), nullable=True, index=True)
    validation_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"), nullable=True, index=True)
    transfer_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"), nullable=True, index=True)
    examples_file_id: Mapped[str | None] = mapped_column(  # data_generation.examples_file
        ForeignKey("files.id", ondelete="SET NULL"), nullable=True, index=True)
    teacher_model_id: Mapped[str | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True, index=True)
    student_model_id: Mapped[str | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True, index=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    result_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The teacher the job fine-tuned, registered as a model when the job succeeded (the job
    # object's `teacher_model`); null when the job did not fine-tune or once it is deleted.
    finetuned_teacher_id: Mapped[str | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True, index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Queue bookkeeping: when the wake-up message was last sent, who claimed the job, liveness.
    enqueued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Routing by size (`routing.py`): the accelerator memory per device estimated at creation,
    # and the queue its wake-ups go to (null for jobs created before either existed: the
    # default queue).
    estimated_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    queue: Mapped[str | None] = mapped_column(String(64), nullable=True)


class JobEventRow(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(String(4000))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class IdempotencyKeyRow(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key", name="uq_idempotency_keys_tenant_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float)
