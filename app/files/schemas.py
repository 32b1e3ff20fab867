"""The wire format of files (datasets), kept apart from the table."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.files.tables import FileRow

# `unlabeled`: texts without labels, only ever a job's `transfer_file` (the teacher labels them).
# `generated`: a set the service wrote (a job's `data_generation`): listed and downloaded, never
# uploaded.
Purpose = Literal["train", "validation", "unlabeled", "generated"]
GENERATED = "generated"
UPLOAD_PURPOSES: tuple[str, ...] = ("train", "validation", "unlabeled")


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    filename: str
    bytes: int
    purpose: str
    format: str
    num_records: int
    columns: list[str]
    created_at: int

    @classmethod
    def from_row(cls, row: FileRow) -> FileObject:
        return cls(
            id=row.id,
            filename=row.filename,
            bytes=row.bytes,
            purpose=row.purpose,
            format=row.format,
            num_records=row.num_records,
            columns=[str(c) for c in row.columns],
            created_at=int(row.created_at),
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
