"""Settings shared by the API, the worker and the CLI, read from `DISTILL_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    # Operating it: logs and metrics.
    log_format: Literal["json", "console"] | None = Field(
        default=None, description="Log lines as `json` (one object a line) or `console` (for a "
        "person); default: json for `distill api` and `distill worker`, console for `distill "
        "serve` and the other commands."
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of a worker's Prometheus metrics (its job "
        "processes' included); 0: not served."
    )
    metrics_cache_s: float = Field(
        default=1.5, ge=0, description="How long `/metrics` reuses its reading of the jobs table, "
        "so that frequent scrapes cannot load the database."
    )
    metrics_db_timeout_s: float = Field(
        default=2.0, gt=0, description="Statement timeout of the `/metrics` jobs query."
    )

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
