"""Settings shared by the API, the worker and the CLI, read from `DISTILL_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.kit.queues import QueueClass, parse_queues


def default_data_dir() -> Path:
    """`.distill/` in the project checkout (so every `distill` command run from anywhere finds the
    same embedded database), or `~/.distill` for an installed package."""
    project = Path(__file__).resolve().parent.parent
    if (project / "pyproject.toml").exists():
        return project / ".distill"
    return Path.home() / ".distill"


class Settings(BaseSettings):
    """One settings object; defaults run with nothing installed (SQLite file, server-less broker)."""

    model_config = SettingsConfigDict(env_prefix="DISTILL_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Files, models and job storage.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file in the data directory."
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker; default: a SQLite-file broker in the data dir."
    )
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, description="Upload size limit.")
    max_model_upload_bytes: int = Field(default=2 * 1024**3, description="Model archive limit.")
    allow_local_model_paths: bool = Field(
        default=False, description="Accept local directories as model refs (trusted setups only)."
    )
    queued_resend_after_s: float = Field(
        default=60.0, description="Re-send the wake-up message of a job queued this long."
    )
    heartbeat_interval_s: float = Field(default=5.0, description="Worker heartbeat period.")
    db_write_retry_s: float = Field(
        default=60.0, description="How long a worker retries a job's database write (progress, "
        "events, the final status) through an outage before it gives that write up."
    )
    stale_heartbeat_after_s: float = Field(
        default=120.0, description="A running job whose heartbeat is this old is re-queued."
    )
    max_attempts: int = Field(default=3, description="Runs of a job before it is failed.")
    shutdown_grace_s: float = Field(
        default=20.0, description="Seconds a worker told to stop (SIGTERM) has to checkpoint its "
        "job and hand it back before it hands it back without the checkpoint and exits."
    )
    reconcile_interval_s: float = Field(default=15.0, description="Reconciler period.")
    predict_max_inputs: int = Field(default=64, description="Inputs per predict call.")
    predict_max_chars: int = Field(default=10_000, description="Characters per predict input.")
    predict_cache_models: int = Field(default=4, ge=1, description="Models kept loaded for predict.")
    predict_cache_bytes: int = Field(
        default=2 * 1024**3, ge=0,
        description="Weights (bytes on disk) kept loaded for predict; the least recently used "
        "models are unloaded past it (a single larger model is still served)."
    )
    idempotency_ttl_s: float = Field(default=24 * 3600.0, description="Idempotency-Key lifetime.")
    # Limits on what one tenant's requests may hold or ask for (each refused with its own error).
    max_records_per_file: int = Field(default=5_000_000, ge=1, description="Records per upload.")
    max_record_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Bytes per line of an uploaded dataset."
    )
    max_queued_jobs_per_tenant: int = Field(
        default=100, ge=1, description="Jobs one tenant may have queued at once."
    )
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="Requests per API key per minute (0: no limit)."
    )

    # Routing by size (`app/jobs/routing.py`): the classes of workers, and this worker's own.
    worker_queues: str = Field(
        default="", description="The classes of workers, as `name=MEMORY[xDEVICES]` entries "
        "separated by commas (`small=8GiB,large=80GiBx4`: memory per device, devices per "
        "worker): a job goes to the smallest queue whose workers can hold it, and is refused "
        "(400) when none can. Empty: one queue, `training`, of unbounded memory and one device "
        "per worker (a single-machine setup: nothing is refused for its size)."
    )
    worker_memory: ByteSize | None = Field(
        default=None, description="This worker's memory per device (e.g. `80GiB`), advertised "
        "when it registers and deciding which queues it consumes; default: read from its device "
        "(CUDA's total memory, or the machine's RAM on a CPU worker)."
    )
    worker_devices: int | None = Field(
        default=None, ge=1, description="This worker's devices, for `hyperparameters.devices` "
        "jobs (DDP); default: the CUDA devices it sees, or 1 on a CPU worker."
    )

    worker_device: Literal["cpu", "cuda"] | None = Field(
        default=None, description="This worker's device kind, advertised when it registers; "
        "default: `cuda` when it sees a CUDA device, else `cpu`."
    )

    @field_validator("worker_queues")
    @classmethod
    def _queues_parse(cls, value: str) -> str:
        parse_queues(value)  # a typo stops the process at start, naming the entry
        return value

    @property
    def queue_classes(self) -> list[QueueClass]:
        """The configured queues, smallest first."""
        return parse_queues(self.worker_queues)

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'distill.db'}"

    @property
    def celery_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{self.resolved_data_dir / 'broker.db'}"

    @property
    def files_dir(self) -> Path:
        return self.resolved_data_dir / "files"

    @property
    def models_dir(self) -> Path:
        return self.resolved_data_dir / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.resolved_data_dir / "jobs"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache after changing the environment)."""
    return Settings()
