"""What the client commands (`distill files|jobs|models …`) share: the server and key options,
`--json`, and one place that turns the client's exceptions into a message and an exit code.

`distill_client` is imported inside the functions: the server commands (`distill api`,
`worker`, `serve`) start without it, and a command that never talks to a server pays nothing.

Each command still spells out its options (`api_url`, `api_key`, `json_out`) and its
`with connect(...)` block, on purpose: typer builds `--help` and the parsing from each function's
own signature, and a command reads top to bottom as the one call it makes. What they print is
shared: `reply` (one changed object), `print_page` (a list), `print_json`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from distill_client import Client

DEFAULT_API_URL = "http://127.0.0.1:8000"
# Exit codes: 1 the server refused the request (or the job did not succeed), 2 bad usage (typer's),
# 3 the server could not be reached, 4 no API key.
EXIT_API, EXIT_UNREACHABLE, EXIT_NO_KEY = 1, 3, 4

ApiUrlOpt = Annotated[str, typer.Option(
    "--api-url", envvar="DISTILL_API_URL", help="The API's base URL.")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="DISTILL_API_KEY", show_default=False,
    help="API key (`distill keys create --tenant NAME` makes one).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the raw JSON (for scripts).")]


def console() -> Console:
    """Standard output (made per call, so that a test runner's captured stream is used).
    Piped into a file or another program, tables are laid out 200 columns wide instead of
    rich's 80, so that ids and names are never cut (`COLUMNS` still wins)."""
    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, soft_wrap=True, width=200 if wide else None)


def table(*headers: str, ids: tuple[int, ...] = (0,)) -> Table:
    """A table whose cells wrap instead of being cut with "…", its id columns kept whole (an id
    is for copying)."""
    out = Table(*headers)
    for index, column in enumerate(out.columns):
        column.overflow = "fold"
        column.no_wrap = index in ids
    return out


def fail(message: str, code: int = EXIT_API) -> typer.Exit:
    """Print `message` to stderr; the caller raises the returned Exit."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(message, markup=False)
    return typer.Exit(code)


@contextmanager
def connect(api_url: str, api_key: str | None) -> Iterator[Client]:
    """A client of the server; the client's errors become a message on stderr and an exit code
    (never a traceback): the server's message and the field at fault, the URL it could not
    reach, or how to get a key."""
    from distill_client import (
        APIConnectionError,
        APIError,
        AuthenticationError,
        Client,
        DistillError,
        MissingAPIKeyError,
    )

    try:
        with Client(api_url, api_key) as client:
            yield client
    except MissingAPIKeyError:
        raise fail("Error: no API key. Set it with `export DISTILL_API_KEY=dsk_…` or pass "
                   "--api-key; an operator of the server creates one with "
                   "`distill keys create --tenant NAME`.", EXIT_NO_KEY) from None
    except APIConnectionError as exc:
        raise fail(f"Error: cannot reach the distill API at {exc.url} ({exc.reason}). Is the "
                   "server running (`distill serve`)? Point DISTILL_API_URL or --api-url at it.",
                   EXIT_UNREACHABLE) from None
    except APIError as exc:
        lines = [f"Error: {exc.message}"]
        if exc.param:
            lines.append(f"  field: {exc.param}")
        lines.append(f"  ({exc.code}, HTTP {exc.status_code})")
        if isinstance(exc, AuthenticationError):
            lines.append("  Check DISTILL_API_KEY / --api-key (`distill keys create --tenant "
                         "NAME` makes a key).")
        raise fail("\n".join(lines)) from None
    except (DistillError, OSError) as exc:  # an unsafe archive, a folder that exists, a timeout
        raise fail(f"Error: {exc}") from None


def print_json(value: Any) -> None:
    """One JSON document on stdout: an API object as the server sent it, or plain data."""
    data = value.to_dict() if hasattr(value, "to_dict") else value
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def reply(value: Any, json_out: bool, line: str) -> None:
    """What a command that changes one object prints: the object as JSON (`--json`), else `line`."""
    if json_out:
        print_json(value)
    else:
        console().print(line)


def print_page(page: Any, json_out: bool, headers: Sequence[str],
               row: Callable[[Any], Sequence[str]], *, ids: tuple[int, ...] = (0,)) -> None:
    """What a list command prints: the page as JSON (`--json`), else a table of `row(item)`
    for each of its items."""
    if json_out:
        print_json(page)
        return
    rows = table(*headers, ids=ids)
    for item in page.data:
        rows.add_row(*row(item))
    console().print(rows)


def when(stamp: int | float | None) -> str:
    """A Unix timestamp as `YYYY-MM-DD HH:MM:SS` UTC, or `-`."""
    if not stamp:
        return "-"
    return datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
