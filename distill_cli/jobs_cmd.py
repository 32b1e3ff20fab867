"""`distill jobs …`: create, list, show, follow, cancel and read the events of jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from distill_cli.follow import exit_for, follow_job, interrupted
from distill_cli.remote import (
    DEFAULT_API_URL,
    ApiKeyOpt,
    ApiUrlOpt,
    JsonOpt,
    connect,
    console,
    fail,
    print_json,
    print_page,
    reply,
    when,
)

if TYPE_CHECKING:
    from distill_client import Job

jobs_cli = typer.Typer(help="Distillation jobs on the server.", no_args_is_help=True)

JobIdArg = Annotated[str, typer.Argument(help="The job's id (`job-…`).")]


def _read_request(path: Path) -> dict[str, Any]:
    """The job request in JOB.json, or a clear error (exit 2) naming the file and the line."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise fail(f"Error: {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column "
                   f"{exc.colno}).", 2) from None
    if not isinstance(body, dict):
        raise fail(f"Error: {path} must hold one JSON object, the job request.", 2)
    return body


@jobs_cli.command("create")
def create(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="JOB.json: the job request (the API's body).")],
    follow: Annotated[bool, typer.Option("--follow", help="Follow it until it finishes "
                                         "(exit code 0 only if it succeeds).")] = False,
    idempotency_key: Annotated[str | None, typer.Option(
        help="Make the create safe to repeat: the same key and body return the same job "
             "(default: a new key, reused only by this command's own retries).")] = None,
    api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None, json_out: JsonOpt = False,
) -> None:
    """Create a job from JOB.json."""
    request = _read_request(path)
    with connect(api_url, api_key) as client:
        job = client.jobs.create(request, idempotency_key=idempotency_key)
        reply(job, json_out, f"Created {job.id} ({job.status}).")
        if follow:
            try:
                job = follow_job(client, job.id, json_out=json_out)
            except KeyboardInterrupt:
                raise interrupted(job.id) from None
    if follow:
        exit_for(job)


@jobs_cli.command("follow")
def follow(job_id: JobIdArg, api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None,
           json_out: JsonOpt = False) -> None:
    """Follow a job live: stage bars with ETA, metrics, the report table at the end.
    Exit code 0 only if it succeeds. With --json: one JSON object per line."""
    with connect(api_url, api_key) as client:
        try:
            job = follow_job(client, job_id, json_out=json_out)
        except KeyboardInterrupt:
            raise interrupted(job_id) from None
    exit_for(job)


@jobs_cli.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None, json_out: JsonOpt = False,
) -> None:
    """The tenant's jobs, newest first."""
    with connect(api_url, api_key) as client:
        page = client.jobs.list(limit=limit, status=status)
    print_page(page, json_out, ("id", "status", "task", "stage", "progress", "model",
                                "created (UTC)"),
               lambda job: (job.id, job.status, job.task, job.progress.stage or "-",
                            f"{job.progress.percent:.0f}%", job.result_model or "-",
                            when(job.created_at)), ids=(0, 5))


def _job_lines(job: Job) -> list[tuple[str, str]]:
    p = job.progress
    rows = [("id", job.id), ("status", job.status), ("task", job.task),
            ("teacher", json.dumps(job.teacher)), ("student", json.dumps(job.student)),
            ("training file", job.training_file), ("validation file", job.validation_file or "-"),
            ("progress", f"{p.stage or '-'} {p.percent:.1f}% step {p.step}/{p.total_steps} "
                         f"epoch {p.epoch}" + (f" ETA {p.eta_seconds:.0f}s"
                                               if p.eta_seconds is not None else "")),
            ("metrics", json.dumps(job.metrics)), ("model", job.result_model or "-"),
            ("created (UTC)", when(job.created_at)), ("started", when(job.started_at)),
            ("finished", when(job.finished_at))]
    if job.error:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    return rows


@jobs_cli.command("get")
def get(job_id: JobIdArg, api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None,
        json_out: JsonOpt = False) -> None:
    """One job: status, progress, metrics, result."""
    with connect(api_url, api_key) as client:
        job = client.jobs.get(job_id)
    if json_out:
        print_json(job)
        return
    out = console()
    for key, value in _job_lines(job):
        out.print(f"{key:<16} {escape(value)}")


@jobs_cli.command("cancel")
def cancel(job_id: JobIdArg, api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None,
           json_out: JsonOpt = False) -> None:
    """Cancel a job (refused once it has finished)."""
    with connect(api_url, api_key) as client:
        job = client.jobs.cancel(job_id)
    reply(job, json_out, f"{job.id} is {job.status}.")


@jobs_cli.command("events")
def events(
    job_id: JobIdArg,
    after: Annotated[str | None, typer.Option(help="Only events after this event id.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (oldest first).")] = 100,
    api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None, json_out: JsonOpt = False,
) -> None:
    """A job's events, oldest first."""
    with connect(api_url, api_key) as client:
        page = client.jobs.events(job_id, after=after, limit=limit)
    if json_out:
        print_json(page)
        return
    out = console()
    for event in page.data:
        out.print(f"{when(event.created_at)}  {event.id:<10} {event.level:<7} "
                  f"{escape(event.message)}")
    if page.has_more:
        out.print(f"… more: --after {page.last_id}")
