"""The API's memory while it checks an upload and creates a job on it: bounded, whatever the
file's size (the body is spooled to disk and read a line at a time). Measured on a real
`distill api` process, from its peak resident set size (VmHWM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories.api import dir_members, job_body, make_key, tar_gz
from tests.factories.api_process import (
    peak_rss_bytes,
    reset_peak_rss,
    start_api,
    stop_api,
    upload_from_disk,
)

MB = 1024 * 1024


def write_records(path: Path, size: int) -> int:
    """Short two-class records filling `size` bytes at most (short lines: the most records,
    and the most per-record overhead, a file of this size can hold); the count written."""
    line = b'{"text": "a film %08d", "label": %d}\n'
    block, count = [], 0
    with path.open("wb") as handle:
        written = 0
        while written + len(line % (0, 0)) <= size:
            block.append(line % (count, count % 2))
            count += 1
            written += len(block[-1])
            if len(block) == 10_000:
                handle.write(b"".join(block))
                block = []
        handle.write(b"".join(block))
    return count


def measure(settings: Any, tiny_teacher_dir: Path, tmp_path: Path, size: int) -> dict[str, int]:
    """Peak RSS growth of `distill api` (bytes) while it takes a `size`-byte upload, then while
    it creates a classification job on it (which reads every label)."""
    auth = make_key(settings, "acme")
    big = tmp_path / "big.jsonl"
    records = write_records(big, size)
    small = tmp_path / "small.jsonl"
    write_records(small, 4096)
    # No record limit: the most records a file of this size can hold, the hardest case.
    proc, url = start_api(settings, DISTILL_MAX_UPLOAD_BYTES=str(max(size, 200 * MB)),
                          DISTILL_MAX_RECORDS_PER_FILE=str(size))
    try:
        # Warm up: every module an upload and a job creation import, loaded before measuring.
        warm = upload_from_disk(url, auth, small)
        assert warm.status_code == 201, warm.text
        archive = tar_gz(dir_members(tiny_teacher_dir))
        teacher = httpx.post(f"{url}/v1/models", headers=auth, timeout=300,
                             files={"file": ("t.tar.gz", archive, "application/gzip")})
        assert teacher.status_code == 201, teacher.text
        body = job_body(teacher=teacher.json()["id"], training_file=warm.json()["id"])
        assert httpx.post(f"{url}/v1/distillation/jobs", headers=auth, json=body,
                          timeout=300).status_code == 201

        reset_peak_rss(proc.pid)
        base = peak_rss_bytes(proc.pid)
        uploaded = upload_from_disk(url, auth, big)
        upload_peak = peak_rss_bytes(proc.pid)
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["num_records"] == records

        reset_peak_rss(proc.pid)
        job_base = peak_rss_bytes(proc.pid)
        body = job_body(teacher=teacher.json()["id"], training_file=uploaded.json()["id"])
        job = httpx.post(f"{url}/v1/distillation/jobs", headers=auth, json=body, timeout=900)
        job_peak = peak_rss_bytes(proc.pid)
        assert job.status_code == 201, job.text
    finally:
        stop_api(proc)
    figures = {"size": big.stat().st_size, "records": records, "base_rss": base,
               "upload_growth": upload_peak - base, "upload_peak": upload_peak,
               "job_growth": job_peak - job_base, "job_peak": job_peak}
    print({k: (f"{v / 1024:,.0f} kB" if k != "records" else v) for k, v in figures.items()})
    return figures


def test_upload_and_job_creation_memory_does_not_grow_with_the_file(
    settings: Any, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # A tenth of the 200 MB limit. Read whole, this file raised the peak by 289 MB on upload and
    # 283 MB again at job creation; read as a stream it costs a few buffers, whatever the size
    # (the full-size run is `slow`).
    figures = measure(settings, tiny_teacher_dir, tmp_path, 20 * MB)

    assert figures["upload_growth"] < 40 * MB, figures
    assert figures["job_growth"] < 40 * MB, figures


@pytest.mark.slow
def test_the_largest_allowed_upload_fits_in_a_few_hundred_megabytes(
    settings: Any, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    figures = measure(settings, tiny_teacher_dir, tmp_path, settings.max_upload_bytes)

    assert figures["size"] > settings.max_upload_bytes - MB
    assert figures["upload_growth"] < 100 * MB, figures
    assert figures["job_growth"] < 100 * MB, figures
