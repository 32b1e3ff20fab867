"""The answers the teacher wrote, kept in the job's work folder as they are written, so that an
attempt killed in the `generate` stage leaves them for the next one (torch-free).

A JSON-lines file (`layout.TEACHER_ANSWERS`): a header line saying what the answers were written
from (the prompts' fingerprint, the teacher's identity, the decoding settings), then one line per
answer, `{"split", "example", "sample", "ids"}`, appended batch by batch, each batch flushed to
the disk before the next is generated. A file whose header differs from the job's (another
teacher, other prompts or settings) is started again; a last line cut short by the worker's
death is dropped and the file truncated to the line before it, so appending goes on cleanly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# An answer's key: (split, example index in that split, sample number).
Key = tuple[str, int, int]


def _key(row: dict[str, Any]) -> Key | None:
    split, example, sample = row.get("split"), row.get("example"), row.get("sample")
    ids = row.get("ids")
    if not (isinstance(split, str) and isinstance(example, int) and isinstance(sample, int)
            and isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
        return None
    return split, example, sample


class AnswerStore:
    """The answers file of one job: `load` what an earlier attempt wrote, `append` as it goes."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header

    def load(self) -> dict[Key, list[int]]:
        """The answers already written under this header; starts the file again (header
        only) when there are none to reuse."""
        answers: dict[Key, list[int]] = {}
        good = 0  # bytes of the file that hold whole, valid lines
        try:
            with self.path.open("rb") as handle:
                first = handle.readline()
                if first.endswith(b"\n") and _loads(first) == {"header": self.header}:
                    good = len(first)
                    for line in handle:
                        row = _loads(line) if line.endswith(b"\n") else None
                        key = _key(row) if isinstance(row, dict) else None
                        if key is None:
                            break
                        answers[key] = list(row["ids"])  # type: ignore[index]
                        good += len(line)
        except OSError:
            pass
        if good == 0:
            self._start()
        elif good != self.path.stat().st_size:
            with self.path.open("r+b") as handle:
                handle.truncate(good)
        return answers

    def append(self, rows: Iterable[tuple[Key, list[int]]]) -> None:
        """Add answers, durably: flushed and synced before this returns."""
        lines = "".join(json.dumps({"split": split, "example": example, "sample": sample,
                                    "ids": ids}) + "\n"
                        for (split, example, sample), ids in rows)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps({"header": self.header}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _loads(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
