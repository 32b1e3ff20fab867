"""Hostile model archives, built block by block (some hold what `tarfile` would never write)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def _header(name: str, *, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "",
            fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """One member's header; a long name becomes a GNU long-name header, or a PAX one."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode = size, kind, linkname, 0o644
    return info.tobuf(format=fmt)


def _padding(size: int) -> bytes:
    return tarfile.NUL * (-size % tarfile.BLOCKSIZE)


def _member(name: str, data: bytes, fmt: int = tarfile.GNU_FORMAT) -> Iterator[bytes]:
    yield _header(name, size=len(data), fmt=fmt)
    yield data
    yield _padding(len(data))


def _gzip(blocks: Iterable[bytes]) -> bytes:
    """gzip of a stream of tar blocks, never holding the uncompressed stream whole."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = io.BytesIO()
    for block in blocks:
        out.write(compressor.compress(block))
    out.write(compressor.compress(tarfile.NUL * 2 * tarfile.BLOCKSIZE))
    out.write(compressor.flush())
    return out.getvalue()


def _repeat(byte: bytes, size: int) -> Iterator[bytes]:
    chunk = byte * MB
    for start in range(0, size, MB):
        yield chunk[: min(MB, size - start)]


def archive(members: dict[str, bytes], *, extra: Iterable[bytes] = (),
            fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A .tar.gz of `members`, then the raw tar blocks of `extra`."""
    def blocks() -> Iterator[bytes]:
        for name, data in members.items():
            yield from _member(name, data, fmt)
        yield from extra
    return _gzip(blocks())


def special(name: str, kind: bytes, linkname: str = "") -> list[bytes]:
    """The header of a link, device or FIFO member."""
    return [_header(name, kind=kind, linkname=linkname)]


def long_name_bomb(members: dict[str, bytes], name_bytes: int = 100 * MB) -> bytes:
    """A GNU long-name header whose 'name' is `name_bytes` long (about 100 KB compressed)."""
    def blocks() -> Iterator[bytes]:
        yield from (b for n, d in members.items() for b in _member(n, d))
        yield _header("././@LongLink", size=name_bytes, kind=tarfile.GNUTYPE_LONGNAME)
        yield from _repeat(b"a", name_bytes)
        yield _padding(name_bytes)
        yield from _member("tokenizer.json", b"{}")
    return _gzip(blocks())


def pax_bomb(members: dict[str, bytes], path_bytes: int = 100 * MB) -> bytes:
    """A PAX extended header whose `path` record is `path_bytes` long."""
    body = path_bytes + len(" path=\n")
    length = body + len(str(body))
    length = body + len(str(length))  # the length counts its own digits
    def blocks() -> Iterator[bytes]:
        yield from (b for n, d in members.items() for b in _member(n, d))
        yield _header("././@PaxHeader", size=length, kind=tarfile.XHDTYPE)
        yield f"{length} path=".encode()
        yield from _repeat(b"a", path_bytes)
        yield b"\n" + _padding(length)
        yield from _member("tokenizer.json", b"{}")
    return _gzip(blocks())


def pax_record(members: dict[str, bytes], key: str, value: str) -> bytes:
    """`members`, then a PAX extended header holding the record `key=value` (any characters)
    before a small member."""
    record = f" {key}={value}\n".encode()
    length = len(record) + len(str(len(record)))
    length = len(record) + len(str(length))  # the length counts its own digits
    data = f"{length}".encode() + record
    def blocks() -> Iterator[bytes]:
        yield from (b for n, d in members.items() for b in _member(n, d))
        yield _header("././@PaxHeader", size=len(data), kind=tarfile.XHDTYPE)
        yield data + _padding(len(data))
        yield from _member("tokenizer.json", b"{}")
    return _gzip(blocks())


def decompression_bomb(members: dict[str, bytes], size: int = 200 * MB,
                       name: str = "model.safetensors") -> bytes:
    """`size` bytes of zeros as one member, after `members` (about 1000:1 compressed)."""
    def blocks() -> Iterator[bytes]:
        yield from (b for n, d in members.items() for b in _member(n, d) if n != name)
        yield _header(name, size=size)
        yield from _repeat(b"\0", size)
    return _gzip(blocks())


def many_members(count: int) -> bytes:
    return archive({f"f{i}.txt": b"" for i in range(count)})


def declared_size(name: str, size: int) -> bytes:
    """A member header declaring `size` bytes with none following (a lie a reader must not trust)."""
    return _gzip([_header(name, size=size)])


def with_json(members: dict[str, bytes], name: str, **changes: Any) -> dict[str, bytes]:
    """`members` with the JSON file `name` updated by `changes`."""
    data = json.loads(members[name]) if name in members else {}
    data.update(changes)
    return {**members, name: json.dumps(data).encode()}


def sharded(members: dict[str, bytes], shard_name: str) -> dict[str, bytes]:
    """`members` with their weights named by a `model.safetensors.index.json` pointing every
    tensor at `shard_name` (and a small shard of its own, so that the archive looks complete)."""
    weights = members["model.safetensors"]
    length = struct.unpack("<Q", weights[:8])[0]
    names = [k for k in json.loads(weights[8 : 8 + length]) if k != "__metadata__"]
    index = {"metadata": {"total_size": len(weights)},
             "weight_map": {name: shard_name for name in names}}
    rest = {k: v for k, v in members.items() if k != "model.safetensors"}
    return {**rest, "model-00001-of-00001.safetensors": weights,
            "model.safetensors.index.json": json.dumps(index).encode()}


def dir_members(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}
