"""Training workers as they registered at start, with their heartbeat."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.kit.db import Base


class WorkerRow(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid:random
    hostname: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(16))  # "cuda" or "cpu"
    device_count: Mapped[int] = mapped_column(Integer)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)  # per device
    queues: Mapped[list[str]] = mapped_column(JSON)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
