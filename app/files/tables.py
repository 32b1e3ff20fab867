"""Uploaded datasets: metadata here, the file itself under the data directory."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.auth import tables as _auth_tables  # noqa: F401 - registers `tenants`, the FK target
from app.kit.db import Base


class FileRow(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(16))
    num_records: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[Any]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[float] = mapped_column(Float, index=True)
