"""Registered models: distilled students and uploaded teachers (built-ins live in code)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.auth import tables as _auth_tables  # noqa: F401 - registers `tenants`, the FK target
from app.kit.db import Base


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    task: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # "distilled" | "finetuned" | "uploaded"
    source_job: Mapped[str | None] = mapped_column(String(64), nullable=True)
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    parameters: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    labels: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[float] = mapped_column(Float, index=True)
