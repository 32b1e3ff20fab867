"""A corpus of broken dataset uploads: each is a 4xx naming the problem (and its line where it
has one), and nothing is stored: no row in the files table, no file (not even a temporary one)
under the data directory."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.factories.api import assert_error

GOOD = b'{"text": "a fine film", "label": 1}\n'


@dataclass
class Broken:
    id: str
    name: str
    body: bytes
    words: tuple[str, ...]  # each must appear in the message (case-insensitive)
    line: int | None = None
    status: int = 400
    code: str = "invalid_file"
    env: dict[str, str] = field(default_factory=dict)


def csv_rows(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


CORPUS = [
    Broken("json-syntax", "a.jsonl", GOOD * 2 + b'{"text": oops}\n', ("invalid json",), 3),
    Broken("json-trailing-garbage", "a.jsonl", GOOD + b'{"text": "a", "label": 1} x\n',
           ("invalid json", "extra data"), 2),
    Broken("json-not-an-object", "a.jsonl", GOOD + b'["a fine film", 1]\n', ("json object",), 2),
    Broken("json-nested-value", "a.jsonl", GOOD * 3 + b'{"text": {"a": 1}, "label": 1}\n',
           ("'text'", "string or number"), 4),
    Broken("json-huge-integer", "a.jsonl",
           GOOD + b'{"text": "a", "label": ' + b"7" * 5000 + b"}\n", ("4300 digits",), 2),
    Broken("json-deep-nesting", "a.jsonl",
           GOOD + b'{"text": ' + b"[" * 200_000 + b"]" * 200_000 + b"}\n",
           ("nested too deeply",), 2),
    Broken("json-nan", "a.jsonl", GOOD + b'{"text": "a", "label": NaN}\n', ("nan",), 2),
    Broken("json-infinite-float", "a.jsonl", GOOD * 2 + b'{"text": "a", "label": 1e999}\n',
           ("1e999", "finite"), 3),
    Broken("json-duplicate-key", "a.jsonl", GOOD + b'{"text": "a", "label": 1, "text": "b"}\n',
           ("'text'", "twice"), 2),
    Broken("json-empty-key", "a.jsonl", GOOD + b'{"text": "a", "": 1}\n', ("empty name",), 2),
    Broken("json-lone-surrogate-key", "a.jsonl", GOOD + b'{"\\ud800": "a", "text": "b"}\n',
           ("surrogate",), 2),
    Broken("json-lone-surrogate-value", "a.jsonl", GOOD + b'{"text": "a \\udc00 b"}\n',
           ("surrogate", "'text'"), 2),
    Broken("json-too-many-columns", "a.jsonl",
           GOOD + json.dumps({f"c{i}": 1 for i in range(1001)}).encode() + b"\n",
           ("1000", "field names"), 2),
    Broken("json-column-name-too-long", "a.jsonl", GOOD + b'{"' + b"k" * 300 + b'": 1}\n',
           ("255",), 2),
    Broken("invalid-utf8", "a.jsonl", GOOD * 2 + b'{"text": "caf\xe9", "label": 1}\n',
           ("utf-8",), 3),
    Broken("nul-byte", "a.jsonl", GOOD + b'{"text": "a\x00b", "label": 1}\n', ("nul",), 2),
    Broken("utf16-with-bom", "a.csv", "text,label\nfine,1\n".encode("utf-16"),
           ("utf-16", "utf-8"), 1),
    Broken("binary-gzip", "a.jsonl", gzip.compress(GOOD * 50), ("utf-8",), 1),
    Broken("empty-file", "a.jsonl", b"", ("no records",)),
    Broken("only-blank-lines", "a.jsonl", b"\n  \n\t\n", ("no records",)),
    Broken("line-over-the-limit", "a.jsonl",
           GOOD + b'{"text": "' + b"x" * 3000 + b'", "label": 1}\n',
           ("2000 bytes", "DISTILL_MAX_RECORD_BYTES"), 2,
           env={"DISTILL_MAX_RECORD_BYTES": "2000"}),
    Broken("too-many-records", "a.jsonl", GOOD * 11, ("more than 10 records",), 11,
           status=413, code="too_many_records", env={"DISTILL_MAX_RECORDS_PER_FILE": "10"}),
    Broken("file-over-the-size-limit", "a.jsonl", GOOD * 100, ("1000 bytes",),
           status=413, code="file_too_large", env={"DISTILL_MAX_UPLOAD_BYTES": "1000"}),
    Broken("csv-ragged-row", "a.csv", csv_rows("text,label", "good,1", "bad,0,extra"),
           ("expected 2 fields", "found 3"), 3),
    Broken("csv-short-row", "a.csv", csv_rows("text,label", "good,1", "good,1", "bad"),
           ("expected 2 fields", "found 1"), 4),
    Broken("csv-duplicate-header", "a.csv", csv_rows("text,label,text", "a,1,b"),
           ("unique", "'text'"), 1),
    Broken("csv-empty-header-name", "a.csv", csv_rows("text,,label", "a,b,1"),
           ("empty",), 1),
    Broken("csv-header-only", "a.csv", csv_rows("text,label"), ("no records",)),
    Broken("csv-field-over-the-csv-limit", "a.csv",
           csv_rows("text,label", "fine,1", '"' + "x" * 140_000 + '",1'),
           ("field larger than field limit",), 3),
    Broken("csv-unterminated-quote", "a.csv",
           csv_rows("text,label", "fine,1", '"no end,1', "more,0", "rows,1"),
           ("malformed row", "unexpected end of data"), 3),
    Broken("csv-text-after-quote", "a.csv", csv_rows("text,label", '"good" film,1'),
           ("malformed row",), 2),
    Broken("csv-bare-carriage-return", "a.csv", b"text,label\nfine,1\nx\ry,1\n",
           ("new-line character",), 3),
    Broken("tsv-ragged-row", "a.tsv", csv_rows("sentence\tlabel", "ok\t1", "a\tb\tc"),
           ("expected 2 fields",), 3),
    Broken("unsupported-extension", "a.txt", GOOD, ("unsupported file type", ".jsonl")),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_broken_upload_is_refused_and_nothing_is_stored(
    client: Any, auth: dict[str, str], settings: Any, monkeypatch: pytest.MonkeyPatch,
    case: Broken,
) -> None:
    from app.files.tables import FileRow
    from app.kit.db import session_scope
    from app.settings import get_settings

    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()

    response = client.post("/v1/files", headers=auth, data={"purpose": "train"},
                           files={"file": (case.name, case.body)})

    error = assert_error(response, case.status, code=case.code, param="file")
    message = error["message"].lower()
    for word in case.words:
        assert word.lower() in message, error["message"]
    if case.line is not None:
        assert f"line {case.line}:" in message, error["message"]
    with session_scope(settings.sqlalchemy_url) as session:
        assert session.scalar(select(func.count()).select_from(FileRow)) == 0
    files_dir = settings.files_dir
    assert (list(files_dir.rglob("*")) if files_dir.exists() else []) == []


def test_the_corpus_is_at_least_twenty_broken_files() -> None:
    assert len({c.id for c in CORPUS}) == len(CORPUS) >= 20


@pytest.mark.parametrize(
    ("name", "body", "columns", "count"),
    [
        ("bom.csv", b"\xef\xbb\xbftext,label\nfine,1\nbad,0\n", ["text", "label"], 2),
        ("bom.jsonl", b"\xef\xbb\xbf" + GOOD * 2, ["text", "label"], 2),
        ("crlf.csv", b"text,label\r\n\"two\r\nlines\",1\r\nbad,0\r\n", ["text", "label"], 2),
        ("separator.jsonl", '{"text": "a\u2028b", "label": 1}\n'.encode(), ["text", "label"], 1),
        ("no-final-newline.jsonl", GOOD + GOOD.rstrip(b"\n"), ["text", "label"], 2),
        ("pair.jsonl", GOOD + b'{"text": "\\ud83d\\ude00", "label": 0}\n', ["text", "label"], 2),
    ],
    ids=["csv-utf8-bom", "jsonl-utf8-bom", "csv-crlf-quoted-newline", "jsonl-line-separator",
         "jsonl-no-final-newline", "jsonl-surrogate-pair"],
)
def test_awkward_but_valid_files_are_accepted(
    client: Any, auth: dict[str, str], name: str, body: bytes, columns: list[str], count: int
) -> None:
    response = client.post("/v1/files", headers=auth, data={"purpose": "train"},
                           files={"file": (name, body)})

    assert response.status_code == 201, response.text
    assert (response.json()["columns"], response.json()["num_records"]) == (columns, count)
