"""`/v1/files` on the real Postgres: upload checks, limits, paging, tenancy and deletes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.factories.api import assert_error
from tests.factories.records import sentiment_records


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: Any, auth: dict[str, str], name: str, body: bytes, purpose: str = "train") -> Any:
    return client.post(
        "/v1/files", headers=auth, data={"purpose": purpose}, files={"file": (name, body)}
    )


def stored_files(settings: Any) -> list[str]:
    files_dir = settings.files_dir
    return sorted(p.name for p in files_dir.iterdir()) if files_dir.exists() else []


@pytest.mark.parametrize(
    ("name", "body", "fmt", "columns", "count"),
    [
        ("train.jsonl", jsonl(sentiment_records(10)), "jsonl", ["text", "label"], 10),
        ("train.csv", b'text,label\n"good, really",positive\nbad film,negative\n', "csv",
         ["text", "label"], 2),
        ("dev.tsv", b'sentence\tlabel\nit is "fine"\t1\nawful\t0\nok\t1\n', "tsv",
         ["sentence", "label"], 3),
    ],
)
def test_upload_each_format(client: Any, auth: dict[str, str], settings: Any, name: str,
                            body: bytes, fmt: str, columns: list[str], count: int) -> None:
    response = upload(client, auth, name, body, purpose="validation")

    assert response.status_code == 201, response.text
    file = response.json()
    assert file["id"].startswith("file-")
    assert file["object"] == "file"
    assert (file["filename"], file["bytes"], file["purpose"]) == (name, len(body), "validation")
    assert (file["format"], file["num_records"], file["columns"]) == (fmt, count, columns)
    assert isinstance(file["created_at"], int)
    assert client.get(f"/v1/files/{file['id']}", headers=auth).json() == file
    assert stored_files(settings) == [file["id"] + "." + fmt]


@pytest.mark.parametrize(
    ("name", "body", "line"),
    [
        ("bad.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": oops}\n', 3),
        ("bad.csv", b"text,label\ngood,1\nbad,0,extra\n", 3),
    ],
)
def test_malformed_file_is_rejected_with_its_line(
    client: Any, auth: dict[str, str], settings: Any, name: str, body: bytes, line: int
) -> None:
    response = upload(client, auth, name, body)

    error = assert_error(response, 400, code="invalid_file", param="file")
    assert f"line {line}" in error["message"]
    assert client.get("/v1/files", headers=auth).json()["data"] == []
    assert stored_files(settings) == []


def test_wrong_extension_and_purpose(client: Any, auth: dict[str, str]) -> None:
    assert_error(upload(client, auth, "data.txt", b"hello\n"), 400, param="file")
    assert_error(upload(client, auth, "d.jsonl", jsonl([{"text": "a"}]), purpose="test"), 400,
                 param="purpose")
    response = client.post("/v1/files", headers=auth, data={"purpose": "train"})
    assert_error(response, 400, param="file")


def test_too_large_upload_is_413_and_stores_nothing(
    client: Any, auth: dict[str, str], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()

    small = upload(client, auth, "small.jsonl", jsonl(sentiment_records(5)))
    big = upload(client, auth, "big.jsonl", jsonl(sentiment_records(200)))
    # Far past the limit: refused from the declared length, before the body is read.
    huge = upload(client, auth, "huge.jsonl", b'{"text": "x"}\n' * 20_000)

    assert small.status_code == 201, small.text
    assert_error(big, 413, param="file")
    assert_error(huge, 413, param="file")
    assert stored_files(settings) == [small.json()["id"] + ".jsonl"]


def test_streamed_upload_without_length_stops_at_the_limit(
    client: Any, auth: dict[str, str], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()

    def body() -> Any:  # chunked transfer: no Content-Length to refuse up front
        yield (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ntrain\r\n'
               b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n')
        for _ in range(1000):
            yield b'{"text": "x"}\n' * 100
        yield b"\r\n--b--\r\n"

    response = client.post("/v1/files", content=body(),
                           headers={**auth, "Content-Type": "multipart/form-data; boundary=b"})

    assert_error(response, 413, param="file")
    assert stored_files(settings) == []


def test_list_pages_newest_first_and_filters(client: Any, auth: dict[str, str]) -> None:
    ids = [upload(client, auth, f"f{i}.jsonl", jsonl(sentiment_records(2)),
                  purpose="train" if i % 2 == 0 else "validation").json()["id"] for i in range(5)]

    first = client.get("/v1/files?limit=2", headers=auth).json()
    second = client.get(f"/v1/files?limit=2&after={first['last_id']}", headers=auth).json()
    rest = client.get(f"/v1/files?limit=2&after={second['last_id']}", headers=auth).json()
    validation = client.get("/v1/files?purpose=validation", headers=auth).json()

    assert first["object"] == "list"
    listed = [f["id"] for page in (first, second, rest) for f in page["data"]]
    assert listed == ids[::-1]
    assert (first["has_more"], second["has_more"], rest["has_more"]) == (True, True, False)
    assert [f["id"] for f in validation["data"]] == [ids[3], ids[1]]
    assert_error(client.get("/v1/files?limit=0", headers=auth), 422, param="limit")
    assert_error(client.get("/v1/files?limit=101", headers=auth), 422, param="limit")
    assert_error(client.get("/v1/files?after=file-nope", headers=auth), 400, param="after")


def test_tenants_see_only_their_files(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], settings: Any
) -> None:
    file_id = upload(client, auth, "mine.jsonl", jsonl(sentiment_records(4))).json()["id"]

    assert_error(client.get(f"/v1/files/{file_id}", headers=other_auth), 404, code="not_found")
    assert_error(client.delete(f"/v1/files/{file_id}", headers=other_auth), 404)
    assert client.get("/v1/files", headers=other_auth).json()["data"] == []
    missing = client.get("/v1/files/file-000", headers=other_auth).json()
    foreign = client.get(f"/v1/files/{file_id}", headers=other_auth).json()
    assert missing["error"]["code"] == foreign["error"]["code"]
    assert client.get(f"/v1/files/{file_id}", headers=auth).status_code == 200


def test_delete_removes_row_and_bytes(client: Any, auth: dict[str, str], settings: Any) -> None:
    file_id = upload(client, auth, "gone.jsonl", jsonl(sentiment_records(4))).json()["id"]

    response = client.delete(f"/v1/files/{file_id}", headers=auth)

    assert response.status_code == 200, response.text
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert_error(client.get(f"/v1/files/{file_id}", headers=auth), 404)
    assert stored_files(settings) == []


def test_delete_is_409_while_an_active_job_uses_the_file(
    client: Any, auth: dict[str, str], settings: Any
) -> None:
    from app.files.tables import FileRow
    from app.jobs.tables import JobRow
    from app.kit.clock import now
    from app.kit.db import session_scope

    file_id = upload(client, auth, "busy.jsonl", jsonl(sentiment_records(4))).json()["id"]
    with session_scope(settings.sqlalchemy_url) as session:
        tenant_id = session.get(FileRow, file_id).tenant_id  # type: ignore[union-attr]
        for status in ("running", "succeeded"):
            session.add(JobRow(
                id=f"job-{status}", tenant_id=tenant_id, status=status, task="causal-lm",
                request={"training_file": "file-other", "validation_file": file_id},
                validation_file_id=file_id, progress={}, metrics={}, created_at=now(), attempts=0,
            ))

    assert_error(client.delete(f"/v1/files/{file_id}", headers=auth), 409, param="file_id")

    with session_scope(settings.sqlalchemy_url) as session:
        session.get(JobRow, "job-running").status = "failed"  # type: ignore[union-attr]
    assert client.delete(f"/v1/files/{file_id}", headers=auth).status_code == 200


def test_missing_or_unknown_key_is_401(client: Any) -> None:
    body = jsonl(sentiment_records(2))
    assert_error(client.get("/v1/files"), 401, code="invalid_api_key")
    assert_error(upload(client, {"Authorization": "Bearer dsk_nope"}, "a.jsonl", body), 401)
    assert_error(client.get("/v1/files", headers={"Authorization": "Basic abc"}), 401)

