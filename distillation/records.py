"""Reading dataset files (.jsonl, .csv, .tsv) into records, with line-numbered errors.

Pure standard library: the API validates uploads with it and the training core reads with it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
Record = dict[str, Any]


class RecordError(ValueError):
    """A malformed dataset; `line` is the 1-based line number in the file, when known."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


@dataclass
class Dataset:
    format: str
    records: list[Record]
    columns: list[str] = field(default_factory=list)


def format_for(filename: str) -> str:
    """`jsonl`, `csv` or `tsv` from a file name, or RecordError naming the accepted endings."""
    suffix = Path(filename).suffix.lower()
    if suffix not in FORMATS:
        raise RecordError(
            f"unsupported file type {suffix or '(none)'!r} for {filename!r}: "
            "upload a .jsonl, .csv or .tsv file"
        )
    return FORMATS[suffix]


def _parse_jsonl(text: str) -> Dataset:
    records: list[Record] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            message = f"invalid JSON ({exc.msg} at column {exc.colno})"
            raise RecordError(message, line=number) from exc
        if not isinstance(value, dict):
            raise RecordError("each line must be a JSON object", line=number)
        for key, item in value.items():
            if isinstance(item, (dict, list)) and not (
                isinstance(item, list) and all(isinstance(x, (str, int, float)) for x in item)
            ):
                raise RecordError(f"field {key!r} must be a string or number", line=number)
            columns.setdefault(key, None)
        records.append(value)
    return Dataset(format="jsonl", records=records, columns=list(columns))


def _parse_delimited(text: str, *, delimiter: str, fmt: str) -> Dataset:
    # QUOTE_NONE for TSV: GLUE-style files contain bare quotes inside sentences.
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise RecordError("the file is empty: expected a header line", line=1) from None
    except csv.Error as exc:
        raise RecordError(f"malformed header ({exc})", line=1) from exc
    header = [h.strip() for h in header]
    if not any(header):
        raise RecordError("the header line is empty", line=1)
    if len(set(header)) != len(header) or "" in header:
        raise RecordError(f"header names must be unique and non-empty, got {header}", line=1)
    records: list[Record] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise RecordError(f"malformed row ({exc})", line=reader.line_num) from exc
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            raise RecordError(
                f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}",
                line=reader.line_num,
            )
        records.append(dict(zip(header, row, strict=True)))
    return Dataset(format=fmt, records=records, columns=header)


def parse_bytes(data: bytes, *, filename: str) -> Dataset:
    """Parse a whole uploaded file; any problem raises RecordError with its line number."""
    fmt = format_for(filename)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecordError("the file is not valid UTF-8 text", line=line) from exc
    if fmt == "jsonl":
        dataset = _parse_jsonl(text)
    else:
        dataset = _parse_delimited(text, delimiter="," if fmt == "csv" else "\t", fmt=fmt)
    if not dataset.records:
        raise RecordError("the file holds no records")
    return dataset


def read_file(path: str | Path) -> Dataset:
    """Read a stored dataset file (its format from the file name)."""
    path = Path(path)
    return parse_bytes(path.read_bytes(), filename=path.name)


def missing_columns(columns: Iterable[str], required: Iterable[str]) -> list[str]:
    have = set(columns)
    return [c for c in required if c not in have]
