"""`distill files …`: upload, list, show and delete datasets on a server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distill_cli.remote import (
    DEFAULT_API_URL,
    ApiKeyOpt,
    ApiUrlOpt,
    JsonOpt,
    connect,
    console,
    print_json,
    print_page,
    reply,
    when,
)

files_cli = typer.Typer(help="Datasets on the server (.jsonl, .csv, .tsv).", no_args_is_help=True)

FileIdArg = Annotated[str, typer.Argument(help="The file's id (`file-…`).")]


@files_cli.command("upload")
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="A .jsonl, .csv or .tsv file.")],
    purpose: Annotated[str, typer.Option(help="train, validation or unlabeled.")] = "train",
    api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None, json_out: JsonOpt = False,
) -> None:
    """Upload a dataset; the server checks it whole and names the line at fault."""
    with connect(api_url, api_key) as client:
        file = client.files.create(path, purpose=purpose)
    reply(file, json_out, f"Uploaded {file.id} ({file.filename}: {file.num_records:,} records, "
                          f"{file.format}, columns {', '.join(file.columns)}; purpose {file.purpose})")


@files_cli.command("list")
def list_files(
    purpose: Annotated[str | None, typer.Option(help="Only files of this purpose.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (newest first).")] = 20,
    api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None, json_out: JsonOpt = False,
) -> None:
    """The tenant's files, newest first."""
    with connect(api_url, api_key) as client:
        page = client.files.list(limit=limit, purpose=purpose)
    print_page(page, json_out, ("id", "filename", "purpose", "format", "records", "bytes",
                                "created (UTC)"),
               lambda f: (f.id, f.filename, f.purpose, f.format, f"{f.num_records:,}",
                          f"{f.bytes:,}", when(f.created_at)))


@files_cli.command("get")
def get(file_id: FileIdArg, api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None,
        json_out: JsonOpt = False) -> None:
    """One file's details."""
    with connect(api_url, api_key) as client:
        file = client.files.get(file_id)
    if json_out:
        print_json(file)
        return
    out = console()
    for key, value in [("id", file.id), ("filename", file.filename), ("purpose", file.purpose),
                       ("format", file.format), ("records", f"{file.num_records:,}"),
                       ("bytes", f"{file.bytes:,}"), ("columns", ", ".join(file.columns)),
                       ("created (UTC)", when(file.created_at))]:
        out.print(f"{key:<14} {value}")


@files_cli.command("delete")
def delete(file_id: FileIdArg, api_url: ApiUrlOpt = DEFAULT_API_URL, api_key: ApiKeyOpt = None,
           json_out: JsonOpt = False) -> None:
    """Delete a file (refused while a queued or running job uses it)."""
    with connect(api_url, api_key) as client:
        deleted = client.files.delete(file_id)
    reply(deleted, json_out, f"Deleted {deleted.id}.")
