"""`distill jobs follow`: a job live in the terminal: one progress bar per stage (with the ETA
the server computes), event and metrics lines as they come, the report table at the end."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from distill_cli.remote import console, fail
from distill_cli.report import report_table

if TYPE_CHECKING:
    from distill_client import Client, Job, JobEvent

EVENT_STYLES = {"warning": "yellow", "error": "bold red"}


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA -"
    minutes, secs = divmod(round(seconds), 60)
    return f"ETA {minutes}:{secs:02d}"


class StageBars:
    """A bar per stage, in the order the stages start; a stage that gives way to the next is
    shown done."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars: dict[str, TaskID] = {}
        self.current: str | None = None

    def update(self, job: Job) -> None:
        p = job.progress
        if p.stage is None:
            return
        if p.stage != self.current and self.current is not None:
            self._done(self.current)
        if p.stage not in self.bars:
            self.bars[p.stage] = self.progress.add_task(p.stage, total=100, steps="", eta="")
        self.current = p.stage
        steps = f"step {p.step}/{p.total_steps}" if p.total_steps else ""
        self.progress.update(self.bars[p.stage], completed=p.percent, steps=steps,
                             eta=_eta(p.eta_seconds))

    def finish(self, succeeded: bool) -> None:
        if succeeded:
            for stage in self.bars:
                self._done(stage)

    def _done(self, stage: str) -> None:
        self.progress.update(self.bars[stage], completed=100, steps="", eta="done")


def _event_line(event: JobEvent) -> str:
    style = EVENT_STYLES.get(str(event.level), "cyan" if event.type == "metrics" else "dim")
    return f"[{style}]· {escape(event.message)}[/{style}]"


def follow_job(client: Client, job_id: str, *, json_out: bool) -> Job:
    """Follow the job until it is final and return it (the client streams, or polls)."""
    from distill_client import Job

    final: Job | None = None
    if json_out:  # one JSON object a line: jobs and events as the server sent them
        for item in client.jobs.stream(job_id):
            kind = "job" if isinstance(item, Job) else "event"
            typer.echo(json.dumps({"type": kind, "data": item.to_dict()}, ensure_ascii=False))
            final = item if isinstance(item, Job) else final
        return final if final is not None else client.jobs.get(job_id)
    out = console()
    columns = (TextColumn("{task.description:<16}"), BarColumn(),
               TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[steps]}"),
               TextColumn("{task.fields[eta]}"), TimeElapsedColumn())
    with Progress(*columns, console=out) as progress:
        bars = StageBars(progress)
        for item in client.jobs.stream(job_id):
            if isinstance(item, Job):
                final = item
                bars.update(item)
            else:
                progress.console.print(_event_line(item))
        if final is None:
            final = client.jobs.get(job_id)
        bars.finish(final.status == "succeeded")
    _summary(client, final, out)
    return final


def _summary(client: Client, job: Job, out: Console) -> None:
    took = ""
    if job.started_at and job.finished_at:
        took = f" in {job.finished_at - job.started_at} s"
    if job.status == "succeeded":
        out.print(f"[green]{job.id} succeeded{took}[/green]: model {job.result_model}")
        if job.result_model:
            model = client.models.get(job.result_model)
            if model.report:
                out.print(report_table(model.to_dict()))
    elif job.status == "failed":
        error = job.error
        detail = escape(f"{error.code}: {error.message}") if error else "no error recorded"
        out.print(f"[red]{job.id} failed{took}[/red]: {detail}")
    else:
        out.print(f"[yellow]{job.id} {job.status}[/yellow]")


def exit_for(job: Job) -> None:
    """Exit code 0 only for a succeeded job."""
    if job.status != "succeeded":
        raise typer.Exit(1)


def interrupted(job_id: str) -> typer.Exit:
    return fail(f"Stopped following {job_id}; the job goes on (`distill jobs follow {job_id}` "
                "to watch it again).", 130)

