"""Model archives on the client side: a downloaded .tar.gz unpacked safely, a folder packed.

A downloaded archive is unpacked with `tarfile`'s `data` filter (no absolute paths, nothing
outside the folder, no device files, no set-uid bits) and, on top of it, no links at all: a
model folder is plain files, and a link is the usual way an archive reaches outside its folder.
It is unpacked beside the destination first and moved into place whole, so a refused archive
leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from distill_client.errors import DistillError


class UnsafeArchiveError(DistillError):
    """The archive holds a link, a special file or a path outside the destination."""


def _plain_members_only(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise UnsafeArchiveError(f"Refused to unpack {member.name!r}: a {kind} "
                                 "(a model archive holds plain files and folders only).")
    if member.name.startswith("/") or ".." in member.name.split("/"):
        # The data filter would strip a leading "/"; an archive that has one is not ours.
        raise UnsafeArchiveError(f"Refused to unpack {member.name!r}: a path outside the folder.")
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"Refused to unpack the archive: {exc}.") from exc


def prepare_destination(dest: Path) -> None:
    """Refuse a destination that holds files already (the model would be mixed with them)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty folder; choose a new one.")
    dest.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """A scratch folder beside `dest` (same file system, so the final move is a rename)."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def unpack(archive: Path, dest: Path, scratch: Path) -> Path:
    """Unpack `archive` into `dest` (via `scratch`) and return the folder `from_pretrained` loads."""
    unpacked = scratch / "unpacked"
    unpacked.mkdir()
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(unpacked, filter=_plain_members_only)
    if dest.exists():
        dest.rmdir()  # empty (checked before the download)
    os.replace(unpacked, dest)
    return model_root(dest)


def model_root(folder: Path) -> Path:
    """`folder` if the model's files are at its top, else its one subfolder that holds them."""
    if (folder / "config.json").is_file():
        return folder
    subfolders = [p for p in folder.iterdir() if p.is_dir()]
    if len(subfolders) == 1 and (subfolders[0] / "config.json").is_file():
        return subfolders[0]
    return folder


def pack_folder(folder: Path, out: Path) -> Path:
    """A Hugging Face model folder as `out` (.tar.gz, the files under `model/`)."""
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname="model")
    return out
