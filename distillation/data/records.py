"""Reading dataset files (.jsonl, .csv, .tsv) as a stream of records, with line-numbered errors.

Pure standard library: the API checks uploads with it and the training core reads with it.
Files are read a line at a time, so checking one (`scan`) holds only the line at hand, the
column names and a count, whatever the file's size; `read_file` keeps the records for training.
Every problem is a RecordError naming its line: bytes that are not UTF-8 text (NUL, UTF-16),
JSON that Python would read but a dataset must not hold (NaN, 1e999, integers past Python's
4,300-digit limit, duplicate keys, unpaired surrogates, nesting), malformed CSV, a chat record
that is no sound conversation or a file mixing chat records with others (`chat`).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from distillation.data.chat import ChatFileCheck
from distillation.data.record_lines import RecordError, json_record, text_lines

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
Record = dict[str, Any]
# Bounds on what a file's summary (the files table's `columns`) can grow to.
MAX_COLUMNS = 1000
MAX_COLUMN_NAME = 255

__all__ = ["Dataset", "Limits", "RecordError", "Summary", "TooManyRecords", "format_for",
           "iter_file", "iter_lines", "missing_columns", "parse_bytes", "read_file", "scan"]


class TooManyRecords(RecordError):
    """The file holds more records than `Limits.max_records`."""


@dataclass(frozen=True)
class Limits:
    """What an upload may hold; None is no limit (a stored file read back is not re-limited)."""

    max_records: int | None = None
    max_line_bytes: int | None = None


@dataclass
class Summary:
    """What a check of the whole file keeps: its format, column names and record count."""

    format: str
    columns: list[str]
    num_records: int


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


class _Reader:
    """Records of one file, in order; `columns` fills in as they are read."""

    def __init__(self, stream: BinaryIO, *, fmt: str, limits: Limits) -> None:
        self.format = fmt
        self.limits = limits
        self.columns: dict[str, None] = {}
        self.count = 0
        self._lines = text_lines(stream, max_line_bytes=limits.max_line_bytes)

    def __iter__(self) -> Iterator[Record]:
        for _, record in self.numbered():
            yield record

    def numbered(self) -> Iterator[tuple[int, Record]]:
        """(the line the record starts on, the record), in order."""
        rows = self._jsonl() if self.format == "jsonl" else self._delimited()
        chat = ChatFileCheck()
        for number, record in rows:
            self.count += 1
            limit = self.limits.max_records
            if limit is not None and self.count > limit:
                raise TooManyRecords(
                    f"the file holds more than {limit} records, the limit per file "
                    "(DISTILL_MAX_RECORDS_PER_FILE): split it", line=number)
            problem = chat.problem(record, number)
            if problem is not None:
                raise RecordError(problem, line=number)
            yield number, record

    def _add_column(self, name: str, number: int) -> None:
        if name in self.columns:
            return
        if not name.strip():
            raise RecordError("a field or column has an empty name", line=number)
        if len(name) > MAX_COLUMN_NAME:
            raise RecordError(f"the field name {name[:40]!r}… is longer than "
                              f"{MAX_COLUMN_NAME} characters", line=number)
        if len(self.columns) >= MAX_COLUMNS:
            raise RecordError(f"more than {MAX_COLUMNS} distinct field names in the file "
                              f"(a new one: {name[:40]!r}): records share a few columns",
                              line=number)
        self.columns[name] = None

    def _jsonl(self) -> Iterator[tuple[int, Record]]:
        for number, text in self._lines:
            if not text.strip():
                continue
            record = json_record(text, line=number)
            for key in record:
                self._add_column(key, number)
            yield number, record

    def _delimited(self) -> Iterator[tuple[int, Record]]:
        tsv = self.format == "tsv"
        # QUOTE_NONE for TSV: GLUE-style files contain bare quotes inside sentences. CSV is
        # strict, so an unterminated quote is an error instead of a field that eats the rest.
        quoting: Literal[0, 3] = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        reader = csv.reader((text for _, text in self._lines), delimiter="\t" if tsv else ",",
                            quoting=quoting, strict=not tsv)
        header = self._next_row(reader)
        if header is None:
            return
        header = [h.strip() for h in header]
        if not any(header):
            raise RecordError("the header line is empty", line=1)
        if len(header) > MAX_COLUMNS:
            raise RecordError(f"the header names {len(header)} columns; the limit is "
                              f"{MAX_COLUMNS}", line=1)
        repeated = sorted(name for name, n in Counter(header).items() if n > 1 and name)
        if repeated or "" in header:
            said = f" ({', '.join(map(repr, repeated))} repeated)" if repeated else ""
            raise RecordError(f"header names must be unique and non-empty, got {header[:20]}"
                              f"{said}", line=1)
        for name in header:
            self._add_column(name, 1)
        while (row := self._next_row(reader)) is not None:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise RecordError(
                    f"expected {len(header)} fields ({', '.join(header[:20])}), found {len(row)}",
                    line=reader.line_num)
            yield reader.line_num, dict(zip(header, row, strict=True))

    @staticmethod
    def _next_row(reader: Any) -> list[str] | None:
        start = reader.line_num + 1
        try:
            return list(next(reader))
        except StopIteration:
            return None
        except csv.Error as exc:
            # Named by the line the row starts on: an open quote is found only lines later.
            where = "" if reader.line_num <= start else f" (found at line {reader.line_num})"
            raise RecordError(f"malformed row ({exc}){where}", line=start) from exc


def _reader(stream: BinaryIO, *, filename: str, limits: Limits) -> _Reader:
    return _Reader(stream, fmt=format_for(filename), limits=limits)


def scan(stream: BinaryIO, *, filename: str, limits: Limits = Limits()) -> Summary:
    """Check a whole file without keeping its records; RecordError names the first bad line."""
    reader = _reader(stream, filename=filename, limits=limits)
    for _ in reader:
        pass
    if not reader.count:
        raise RecordError("the file holds no records")
    return Summary(format=reader.format, columns=list(reader.columns), num_records=reader.count)


def iter_file(path: str | Path) -> Iterator[Record]:
    """The records of a stored dataset file, one at a time (its format from the file name)."""
    path = Path(path)
    with path.open("rb") as stream:
        yield from _reader(stream, filename=path.name, limits=Limits())


def iter_lines(path: str | Path) -> Iterator[tuple[int, Record]]:
    """(line number, record) of a stored dataset file, one at a time: for messages that name the
    line (a JSONL file may have blank lines, a CSV record may span several)."""
    path = Path(path)
    with path.open("rb") as stream:
        yield from _reader(stream, filename=path.name, limits=Limits()).numbered()


def _collect(stream: BinaryIO, *, filename: str) -> Dataset:
    reader = _reader(stream, filename=filename, limits=Limits())
    records = list(reader)
    if not records:
        raise RecordError("the file holds no records")
    return Dataset(format=reader.format, records=records, columns=list(reader.columns))


def parse_bytes(data: bytes, *, filename: str) -> Dataset:
    """Parse a whole file held in memory; any problem raises RecordError with its line number."""
    return _collect(io.BytesIO(data), filename=filename)


def read_file(path: str | Path) -> Dataset:
    """Read a stored dataset file (its format from the file name), records and all."""
    path = Path(path)
    with path.open("rb") as stream:
        return _collect(stream, filename=path.name)


def missing_columns(columns: Iterable[str], required: Iterable[str]) -> list[str]:
    have = set(columns)
    return [c for c in required if c not in have]
