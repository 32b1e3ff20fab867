"""Settings shared by the API, the worker and the CLI, read from `DISTILL_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.jobs.queue_classes import QueueClass, parse_queues


def default_data_dir() -> Path:
    """`.distill/` in the project checkout (so every `distill` command run from anywhere finds the
    same embedded database), or `~/.distill` for an installed package."""
    project = Path(__file__).resolve().parent.parent
    if (project / "pyproject.toml").exists():
        return project / ".distill"
    return Path.home() / ".distill"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or `taskset`'s share),
    not the machine's count that torch would otherwise size its thread pool by."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


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
    storage_url: str | None = Field(
        default=None, description="Where uploads, models and job state are kept: unset (the data "
        "directory) or a local folder (a path or file://...), or s3://bucket/prefix for an "
        "S3-compatible store that the API and workers share instead of a folder."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of the S3-compatible store (MinIO: http://minio:9000); "
        "unset: AWS, or the standard AWS_ENDPOINT_URL. Credentials: the standard AWS_* variables."
    )
    scratch_dir: Path | None = Field(
        default=None, description="With a remote store: this process's own cache of what it "
        "pulls from the store (a worker's job folders, the models predict loads); default: "
        "`scratch/` in the data directory."
    )
    scratch_max_bytes: int = Field(
        default=20 * 1024**3, ge=0, description="With a remote store: bytes of copies (uploads, "
        "model versions) the scratch cache keeps; past it the least recently used copies are "
        "deleted (never the one being handed out). Job folders are not counted."
    )
    store_sync_interval_s: float = Field(
        default=2.0, gt=0, description="With a remote store: how often a worker pushes its "
        "running job's new checkpoints and teacher cache to the store."
    )
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, description="Upload size limit.")
    max_model_upload_bytes: int = Field(default=2 * 1024**3, description="Model archive limit.")
    max_gguf_parameters: int = Field(
        default=2_000_000_000, ge=1, description="Values the tensors of an uploaded .gguf file "
        "may hold (400 invalid_gguf above it): the API process dequantises it to float32 "
        "safetensors, 4 bytes a value, holding the whole model in memory while it converts."
    )
    max_request_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1, description="Bytes of any other request body (the JSON "
        "of a job or a predict call): a larger one is refused (413) before it is read or "
        "parsed, ahead of the key check. The default holds the largest predict call "
        "(`predict_max_inputs` × `predict_max_chars`, non-ASCII characters \\u-escaped)."
    )
    allow_local_model_paths: bool = Field(
        default=False, description="Accept local directories as model refs (trusted setups only)."
    )
    queued_resend_after_s: float = Field(
        default=60.0, description="Re-send the wake-up message of a job queued this long."
    )
    heartbeat_interval_s: float = Field(default=5.0, description="Worker heartbeat period.")
    metrics_write_interval_s: float = Field(
        default=1.0, ge=0, description="A worker writes a running job's step metrics at most "
        "once per this many seconds, every step's event since the last write in one "
        "transaction (evaluation metrics and the run's end are written at once); 0: every step."
    )
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
    events_poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often a live event stream (`/events?stream=true`) "
        "checks its job for changes: one query per API process for every open stream, and a "
        "stream reads its job and new events only when they changed."
    )
    events_max_streams: int = Field(
        default=400, ge=1, description="Live event streams one API process holds open at once; "
        "one more is refused (429, with Retry-After)."
    )
    events_max_streams_per_tenant: int = Field(
        default=20, ge=1, description="Live event streams one tenant may hold open on one API "
        "process; one more is refused (429, with Retry-After)."
    )
    events_ping_interval_s: float = Field(
        default=15.0, gt=0, description="Seconds between keep-alive comments on a live event "
        "stream, so that proxies keep an idle stream open."
    )
    predict_max_inputs: int = Field(default=64, description="Inputs per predict call.")
    predict_max_chars: int = Field(default=10_000, description="Characters per predict input.")
    predict_cache_models: int = Field(
        default=4, ge=1, description="Models loaded for predict at any moment (an unloaded model "
        "still answering its last calls counts until it is freed)."
    )
    predict_cache_bytes: int = Field(
        default=2 * 1024**3, ge=0,
        description="Weights (bytes on disk) loaded for predict at any moment; the least recently "
        "used models are unloaded to make room (a new one loads once they are freed), and a "
        "model larger than this alone is refused (503 model_too_large)."
    )
    predict_max_batch: int = Field(
        default=32, ge=1, description="Inputs one forward pass of a served model takes: "
        "concurrent predict calls to one model are batched up to this many inputs."
    )
    predict_max_wait_ms: float = Field(
        default=0.0, ge=0, description="How long a predict call waits for others to share its "
        "forward pass. 0 (the default): none; batches still form, since the calls that arrive "
        "while a batch runs make up the next one, and a lone call pays no wait (measured: "
        "`benchmarks/serving.py`, 2 ms cost a call at concurrency 1 and gained nothing at 32)."
    )
    predict_threads: int = Field(
        default_factory=usable_cpus, ge=1,
        description="torch threads per served model (default: the CPUs this process may use)."
    )
    lookup_cache_s: float = Field(
        default=5.0, ge=0, description="Seconds an API key's tenant and a model's record are "
        "remembered for predict (a revoked key or deleted model stops answering within it; "
        "0: look up every request)."
    )
    card_max_bytes: int = Field(
        default=256 * 1024, ge=1, description="Bytes of a model's README.md the dashboard reads "
        "and renders as its card; a longer one is shown truncated, saying so."
    )
    idempotency_ttl_s: float = Field(default=24 * 3600.0, description="Idempotency-Key lifetime.")
    # Limits on what one tenant's requests may hold or ask for (each refused with its own error).
    max_records_per_file: int = Field(default=5_000_000, ge=1, description="Records per upload.")
    max_record_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Bytes per line of an uploaded dataset."
    )
    max_vocab_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="Bytes of a model's tokenizer.json (or vocab "
        "file) read at job creation; larger ones are refused (400 invalid_tokenizer)."
    )
    max_vocab_entries: int = Field(
        default=1_000_000, ge=1, description="Tokens a model's vocabulary may hold to be read at "
        "job creation; more are refused (400 invalid_tokenizer)."
    )
    max_queued_jobs_per_tenant: int = Field(
        default=100, ge=1, description="Jobs one tenant may have queued at once."
    )
    max_running_jobs_per_tenant: int = Field(
        default=2, ge=0, description="Jobs one tenant may have running (or cancelling) at once: "
        "a worker claims another tenant's job instead, and the tenant's next job waits queued "
        "until one of its running jobs ends (0: no limit)."
    )
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="Control-plane requests (every route but predict) per "
        "API key per minute (0: no limit)."
    )
    predict_rate_limit_per_minute: int = Field(
        default=60_000, ge=0, description="Predict calls per API key per minute, in a budget of "
        "their own: serving traffic neither spends nor is held back by the control plane's "
        "(0: no limit)."
    )
    rate_limit_refused_job_cost: int = Field(
        default=10, ge=0, description="Requests' worth of the key's allowance that a refused job "
        "creation (a 400 after the job's checks) costs on top of its own request: the checks "
        "read files and models, so refusals must not be free to repeat."
    )
    max_concurrent_validations: int = Field(
        default=2, ge=1, description="Job creations one API process checks at once (their checks "
        "read files and models on the shared thread pool); others wait `validation_wait_s`, then "
        "get 503 busy with Retry-After."
    )
    validation_wait_s: float = Field(
        default=5.0, ge=0, description="How long a job creation waits for a free check slot."
    )
    validation_max_records: int = Field(
        default=100_000, ge=1, description="Records of each file a job's checks at creation read "
        "(labels, the vocabulary a target student is sized at); the worker checks the rest."
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

    export_runtimes: bool = Field(
        default=True, description="Export every finished classification student to its ONNX "
        "runtimes (fp32 and int8), each evaluated and timed on the job's evaluation split, and "
        "serve the fastest that keeps its accuracy by default. Off: the student is kept in "
        "torch only (its report says the runtimes were not exported), which saves the export's "
        "seconds per job where ONNX serving and downloads are not wanted."
    )

    teacher_cache_max_bytes: int = Field(
        default=8 * 1024**3, ge=0, description="Bytes a job's teacher cache may "
        "give the teacher's hidden states (fp16: real training tokens × layers the losses read "
        "× width × 2), kept in the job's work folder for `hidden_mse` and `cosine` "
        "classification jobs. Over it a warning event names the size and the budget, the "
        "logits are still cached and the teacher runs every step for the hidden-state terms."
    )

    cpu_bf16: Literal["auto", "on", "off"] = Field(
        default="auto", description="bf16 autocast when a CPU worker trains (the teacher's "
        "fine-tuning, its cache pass and the distillation loop; weights, optimizer and losses "
        "stay fp32, evaluation and the exported model fp32). `auto`: where the CPU computes "
        "bf16 in hardware (AMX or AVX512-BF16), elsewhere fp32 (emulated bf16 is slower); `off`: "
        "fp32 always. A job's report names the precision it trained in. CUDA trains in bf16."
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
    def remote_storage(self) -> bool:
        """Whether the store is an object store (`s3://…`) rather than a local folder."""
        url = self.storage_url or ""
        return "://" in url and not url.startswith("file://")

    @property
    def resolved_scratch_dir(self) -> Path:
        return (self.scratch_dir or self.resolved_data_dir / "scratch").expanduser().resolve()

    @property
    def local_root(self) -> Path:
        """The folder `files/`, `models/` and `jobs/` live in: the store itself when it is local,
        this process's scratch cache of it when it is remote."""
        if self.remote_storage:
            return self.resolved_scratch_dir
        if self.storage_url:
            return Path(self.storage_url.removeprefix("file://")).expanduser().resolve()
        return self.resolved_data_dir

    @property
    def files_dir(self) -> Path:
        return self.local_root / "files"

    @property
    def models_dir(self) -> Path:
        return self.local_root / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.local_root / "jobs"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache after changing the environment)."""
    return Settings()
