"""The `distill` command: serve, api, worker, migrate, keys, demo (the server's side) and
files, jobs, models (a client of a server, on `distill_client`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from app.kit.logs import LogFormat
from app.settings import Settings, get_settings
from distill_cli.files_cmd import files_cli
from distill_cli.jobs_cmd import jobs_cli
from distill_cli.models_cmd import models_cli
from distill_cli.processes import stop_process
from worker.metrics import worker_metrics_env

cli = typer.Typer(help="Distillation as a service: teacher in, small fast student out.",
                  no_args_is_help=True, add_completion=False)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(files_cli, name="files")
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(models_cli, name="models")

# Every process the command starts (API, worker, serve, demo) keeps the Hugging Face Hub offline,
# as the Docker image does: models come from uploads and the data directory, never from a download
# that a model's files could ask for. Set before anything imports huggingface_hub, which reads
# them once, at import.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

HostOpt = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]
T = TypeVar("T")


def _prepare(settings: Settings) -> None:
    """Create the data directory and bring the schema up to date (idempotent)."""
    from app.kit.migrate import upgrade

    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    for path in (settings.files_dir, settings.models_dir, settings.jobs_dir):
        path.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url)


def _worker_argv(concurrency: int, queues: tuple[str, ...] | None = None, *,
                 log_format: LogFormat) -> list[str]:
    """The Celery worker's command line. The CLI starts the worker as a program, never imports
    it: the API side (this package) stays below the Celery process in the layers. Logging JSON,
    it prints no banner: every line of its output is a JSON object."""
    from app.jobs.queue import TRAINING_QUEUE

    quiet = ["--quiet"] if log_format == "json" else []
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", *quiet, "worker",
            "-Q", ",".join(queues or (TRAINING_QUEUE,)), "-c", str(concurrency),
            "--loglevel", "INFO", "--without-gossip", "--without-mingle"]


def _worker_env(settings: Settings, log_format: LogFormat) -> dict[str, str]:
    """Environment a worker needs before it starts: its log format, its metrics folder, and (for
    JSON) no progress bars from transformers, which would write half-lines between the JSON."""
    env = {"DISTILL_LOG_FORMAT": log_format, **worker_metrics_env(settings)}
    if log_format == "json":
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return env


@cli.command()
def migrate() -> None:
    """Apply the database migrations."""
    settings = get_settings()
    _prepare(settings)
    typer.echo(f"Database at {_redact(settings.sqlalchemy_url)} is up to date.")


@cli.command()
def api(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """Run the API server alone (workers run as `distill worker`)."""
    import uvicorn

    _configure_logs(default="json")
    uvicorn.run("app.main:app", host=host, port=port, log_level="info", log_config=None)


@cli.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Jobs run at once (one per process).")] = 1,
    queues: Annotated[str | None, typer.Option(
        help="Queues to consume, comma-separated; default: every DISTILL_WORKER_QUEUES class "
        "this worker's memory and devices can hold.")] = None,
    memory: Annotated[str | None, typer.Option(
        help="Memory per device, e.g. 80GiB; default: read from the device.")] = None,
    devices: Annotated[int | None, typer.Option(
        min=1, help="Devices this worker trains on; default: the CUDA devices it sees, or 1.")]
    = None,
) -> None:
    """Run a Celery training worker (and its reconciler timer), registered with what it can
    hold and consuming the queues of the jobs that fit it."""
    from app.workers.capabilities import NoQueue, resolve

    if memory is not None:
        os.environ["DISTILL_WORKER_MEMORY"] = memory
    if devices is not None:
        os.environ["DISTILL_WORKER_DEVICES"] = str(devices)
    get_settings.cache_clear()
    settings = get_settings()
    if not settings.database_url:  # embedded SQLite: nobody else runs the migrations
        _prepare(settings)
    wanted = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        caps = resolve(settings, queues=wanted)
    except NoQueue as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory/--devices/--queues") from None
    # The Celery process registers these, without reading the device again.
    os.environ.update({"DISTILL_WORKER_MEMORY": str(caps.memory_bytes),
                       "DISTILL_WORKER_DEVICES": str(caps.device_count),
                       "DISTILL_WORKER_DEVICE": caps.device})
    typer.echo(f"distill worker: {caps.device_count} {caps.device} device(s) of "
               f"{caps.memory_bytes / 1024**3:.1f} GiB; queues {', '.join(caps.queues)}",
               err=True)
    log_format = settings.log_format or "json"
    argv = _worker_argv(concurrency, caps.queues, log_format=log_format)
    # Before the worker imports prometheus-client and transformers, which read them once.
    os.environ.update(_worker_env(settings, log_format))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # the worker takes this process over (same pid, same signals)


@cli.command()
def serve(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """API + a training worker + the reconciler in one command, on the configured data directory
    (by default a SQLite database and a server-less broker: nothing else to install)."""
    import uvicorn

    settings = get_settings()
    _prepare(settings)
    # One format for both processes of this command (console unless asked otherwise).
    log_format = settings.log_format or "console"
    env = {**os.environ, "DISTILL_DATA_DIR": str(settings.resolved_data_dir),
           **_worker_env(settings, log_format)}
    # The only worker of this machine consumes every configured queue.
    queues = tuple(q.name for q in settings.queue_classes)
    worker_proc = subprocess.Popen(_worker_argv(1, queues, log_format=log_format), env=env,
                                   preexec_fn=_die_with_parent)
    # uvicorn re-raises SIGTERM after its graceful shutdown; as SystemExit it runs the `finally`
    # below, which stops the worker too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    typer.echo(f"distill: data in {settings.resolved_data_dir}; API on http://{host}:{port} "
               f"(docs at /docs); worker pid {worker_proc.pid}")
    try:
        uvicorn.run("app.main:app", host=host, port=port, log_level="info", log_config=None)
    finally:
        # The worker checkpoints its job and hands it back within its grace period.
        stop_process(worker_proc, timeout=settings.shutdown_grace_s + 10)


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if `distill serve` dies without cleaning up (SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@cli.command()
def workers() -> None:
    """List the registered training workers: device, memory, queues, alive or not."""
    from app.kit.db import session_scope
    from app.workers.registry import list_workers

    settings = get_settings()
    _prepare(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        rows = [(row.id, f"{row.device_count}x {row.device}",
                 f"{row.memory_bytes / 1024**3:.1f} GiB", ",".join(row.queues),
                 "alive" if alive else "silent")
                for row, alive in list_workers(
                    session, alive_within_s=settings.stale_heartbeat_after_s)]
    typer.echo(f"{'id':<48}  {'devices':<9}  {'memory':<10}  {'queues':<24}  state")
    for worker_id, devs, mem, names, state in rows:
        typer.echo(f"{worker_id:<48}  {devs:<9}  {mem:<10}  {names:<24}  {state}")


@keys_cli.command("create")
def keys_create(tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")]) -> None:
    """Create an API key; the key is printed once, as the last word of the last line."""
    from app.auth.service import create_key
    from app.kit.db import session_scope

    if not tenant.strip():
        raise typer.BadParameter("the tenant name must not be empty", param_hint="--tenant")
    settings = get_settings()
    _prepare(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        row, key = create_key(session=session, tenant_name=tenant.strip())
    typer.echo(f"Created an API key for tenant {row.name!r} (only its hash is stored; "
               "keep it now):")
    typer.echo(key)


@keys_cli.command("list")
def keys_list(tenant: Annotated[str, typer.Option(help="Tenant whose keys to list.")]) -> None:
    """List a tenant's keys: id, prefix, created, last used, revoked (never the key itself)."""
    from app.auth.service import list_keys
    from app.kit.db import session_scope

    settings = get_settings()
    _prepare(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        rows = _or_exit(lambda: list_keys(session=session, tenant_name=tenant.strip()))
        lines = [(r.id, f"{r.prefix}…", _when(r.created_at), _when(r.last_used_at),
                  _when(r.revoked_at)) for r in rows]
    typer.echo(f"{'id':<29}  {'prefix':<9}  {'created (UTC)':<19}  {'last used':<19}  revoked")
    for key_id, prefix, created, used, revoked in lines:
        typer.echo(f"{key_id:<29}  {prefix:<9}  {created:<19}  {used:<19}  {revoked}")


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (`key-…`).")]) -> None:
    """Revoke a key: its next request is refused (401)."""
    from app.auth.service import revoke_key
    from app.kit.db import session_scope

    settings = get_settings()
    _prepare(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        row, revoked_now = _or_exit(lambda: revoke_key(session=session, key_id=key_id.strip()))
        when = _when(row.revoked_at)
    typer.echo(f"Revoked API key {key_id} ({row.prefix}…)." if revoked_now
               else f"API key {key_id} was already revoked ({when}).")


def _or_exit(call: Callable[[], T]) -> T:
    """`call()`, or its service error printed and exit code 1."""
    from app.kit.errors import ServiceError

    try:
        return call()
    except ServiceError as exc:
        typer.echo(f"Error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


def _when(stamp: float | None) -> str:
    """A timestamp as UTC `YYYY-MM-DD HH:MM:SS`, or `-` for none."""
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@cli.command()
def demo(
    rows: Annotated[int, typer.Option(help="SST-2 training rows to use.")] = 8000,
    full: Annotated[bool, typer.Option("--full", help="Use all 67,349 training rows.")] = False,
    transfer: Annotated[int, typer.Option(
        help="Other training rows' sentences to upload as unlabelled transfer text.")] = 24000,
    epochs: Annotated[int | None, typer.Option(
        help="Distillation epochs (default: 2, or 5 with --chat).")] = None,
    chat: Annotated[bool, typer.Option(
        "--chat", help="Distil the built-in chat model SmolLM2-135M-Instruct instead, for one "
        "narrow job (answering whether a review is positive or negative).")] = False,
    prompts: Annotated[int, typer.Option(
        help="--chat: SST-2 training sentences to upload as chat prompts.")] = 256,
    validation: Annotated[int, typer.Option(
        help="--chat: SST-2 dev sentences to upload as validation prompts.")] = 48,
    sst2_dir: Annotated[Path | None, typer.Option(help="Folder with SST-2 train.tsv/dev.tsv.")]
    = None,
    port: PortOpt = 8765,
) -> None:
    """Serve, upload SST-2 (labelled rows and unlabelled texts), distil the built-in MiniLM into a
    student 4x smaller, download it, predict with it and print the report. With --chat: distil
    the built-in SmolLM2 chat model on teacher-written answers and on-policy, and print the
    teacher's and the student's answers side by side."""
    if chat:
        from distill_cli.chat_demo import run_chat_demo

        run_chat_demo(prompts=prompts, validation=validation, epochs=epochs or 5,
                      sst2_dir=sst2_dir, port=port)
        return
    from distill_cli.demo import run_demo

    run_demo(rows=None if full else rows, transfer=transfer, epochs=epochs or 2,
             sst2_dir=sst2_dir, port=port)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _configure_logs(*, default: LogFormat) -> None:
    """Log lines in `DISTILL_LOG_FORMAT`, else `default`; API keys redacted from every one."""
    from app.auth.logs import redact, redact_key_logs
    from app.kit.logs import configure_logging

    configure_logging(get_settings().log_format or default, scrub=redact)
    redact_key_logs()


def main() -> None:
    os.environ.update(OFFLINE_ENV)
    _configure_logs(default="console")  # `distill api` and `distill worker` switch to json
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the demo
    logging.getLogger("alembic").setLevel(logging.WARNING)  # `keys create` should print the key
    cli()


if __name__ == "__main__":
    main()
