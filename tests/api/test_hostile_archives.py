"""Hostile model archives against `POST /v1/models` on the real Postgres: each is a 400
`invalid_model_archive` naming the problem, nothing is stored (no row, no folder, no leftover),
and the archives that unpack to far more than they weigh stay within a bounded memory.

Memory is the API's own: the app runs in this process (TestClient), so the peak of this
process's resident memory during the request (`VmHWM` after resetting it through
`/proc/self/clear_refs`) and the peak of Python's allocations (tracemalloc) bound what the API
held. `pytest -s` prints the figures of every case.
"""

from __future__ import annotations

import gc
import json
import os
import tarfile
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import assert_error, upload_archive
from tests.factories.archives import (
    MB,
    archive,
    declared_size,
    decompression_bomb,
    dir_members,
    long_name_bomb,
    many_members,
    pax_bomb,
    pax_record,
    sharded,
    special,
    with_json,
)

MEMORY_BOUND = 100 * MB
Members = dict[str, bytes]


@dataclass(frozen=True)
class Hostile:
    build: Callable[[Members, Path], bytes]  # the teacher's files and a neighbouring model's folder
    needle: str  # what the 400's message must name
    bounded: bool = False  # one that unpacks to far more than it weighs: memory is asserted


def _config(**changes: Any) -> Callable[[Members, Path], bytes]:
    return lambda m, _: archive(with_json(m, "config.json", **changes))


def _json_of_many_values(members: Members, _: Path) -> bytes:
    # auto_map, then about 40 MB of empty lists and objects (10M values): parsed whole, that is
    # about 1 GB of Python objects; random order keeps the compression ratio under the limit.
    values = (b"[],", b"{},", b"[[]],", b"[{}],")
    body = b"".join(values[b & 3] for b in os.urandom(10_000_000))
    data = b'{"auto_map": {"AutoTokenizer": "evil.Tok"}, "pad": [' + body + b"[]]}"
    return archive({**members, "vocab.json": data})


def _without_vocab(members: Members) -> Members:
    return {k: v for k, v in members.items() if k not in ("vocab.txt", "tokenizer.json")}


def _oversized_tokenizer_config(members: Members, _: Path) -> bytes:
    # Random hex barely compresses (about 2:1), so the ratio limit leaves it to the JSON limit.
    padding = os.urandom(32 * MB + 1024).hex()
    data = json.dumps({"auto_map": {"AutoTokenizer": ["evil.Tok", None]}, "pad": padding})
    return archive({**members, "tokenizer_config.json": data.encode()})


CORPUS = {
    "pickle weights": Hostile(lambda m, _: archive({**m, "pytorch_model.bin": b"\x80\x04K."}),
                              "pytorch_model.bin: pickle weights are not accepted"),
    "remote code file": Hostile(lambda m, _: archive({**m, "modeling_evil.py": b"import os"}),
                                "modeling_evil.py: code files are not accepted"),
    "auto_map in config.json": Hostile(_config(auto_map={"AutoModel": "evil.Model"}), "auto_map"),
    "auto_map in a 64 MB+ JSON": Hostile(_oversized_tokenizer_config,
                                         "JSON files over 67108864 bytes are not accepted"),
    "JSON of 10M empty values (40 MB)": Hostile(_json_of_many_values, "vocab.json has an 'auto_map'",
                                                bounded=True),
    "path traversal": Hostile(lambda m, _: archive({**m, "../evil": b"x"}), "'..'"),
    "absolute path": Hostile(lambda m, _: archive({**m, "/etc/evil": b"x"}), "absolute path"),
    "symlink": Hostile(lambda m, _: archive(m, extra=special("vocab.txt", tarfile.SYMTYPE,
                                                             "/etc/passwd")),
                       "is a symbolic link"),
    "hardlink": Hostile(lambda m, _: archive(m, extra=special("vocab.txt", tarfile.LNKTYPE,
                                                              "/etc/passwd")),
                        "is a hard link"),
    "character device": Hostile(lambda m, _: archive(m, extra=special("zero", tarfile.CHRTYPE)),
                                "is a character device"),
    "fifo": Hostile(lambda m, _: archive(m, extra=special("pipe", tarfile.FIFOTYPE)), "is a FIFO"),
    "decompression bomb (200 MB of zeros)": Hostile(
        lambda m, _: decompression_bomb(m), "compression ratio passed 100:1", bounded=True),
    "long-name header bomb (100 MB name)": Hostile(
        lambda m, _: long_name_bomb(m), "GNU long-name header of 104857600 bytes", bounded=True),
    "PAX header bomb (100 MB path)": Hostile(
        lambda m, _: pax_bomb(m), "a PAX extended header of 104857616 bytes", bounded=True),
    "PAX size in a non-ASCII digit ('²')": Hostile(
        lambda m, _: pax_record(m, "size", "\u00b2"), "a PAX header declares a size that is not a"),
    "PAX size in Arabic-Indic digits": Hostile(
        lambda m, _: pax_record(m, "size", "\u0661\u0662"), "that is not a number of at most"),
    "PAX size of 5,000 digits": Hostile(
        lambda m, _: pax_record(m, "size", "9" * 5000), "that is not a number of at most"),
    "name of 5,000 characters (PAX)": Hostile(
        lambda m, _: archive({**m, "a" * 5000: b"x"}, fmt=tarfile.PAX_FORMAT),
        "has a name longer than 1024 bytes", bounded=True),
    "10,001 members": Hostile(lambda m, _: many_members(10_001), "more than 10000 members",
                              bounded=True),
    "member declaring 100 GB": Hostile(lambda m, _: declared_size("model.safetensors", 100 << 30),
                                       "declares 107374182400 bytes", bounded=True),
    "member twice": Hostile(lambda m, _: archive(m, extra=special("config.json", tarfile.REGTYPE)),
                            "'config.json' clashes with another member"),
    "not a tar.gz": Hostile(lambda m, _: b"not a tarball", "not a readable .tar.gz"),
    "weight_map '../' to a neighbour": Hostile(
        lambda m, victim: archive(sharded(m, f"../{victim.name}/model.safetensors")),
        "model.safetensors.index.json: weight_map"),
    "weight_map absolute path": Hostile(
        lambda m, victim: archive(sharded(m, str(victim / "model.safetensors"))),
        "only plain file names in the model folder"),
    "fast_tokenizer_files '../'": Hostile(
        lambda m, victim: archive(with_json(m, "tokenizer_config.json", fast_tokenizer_files=[
            f"../{victim.name}/tokenizer.99.0.json"])),
        "fast_tokenizer_files"),
    "vocab_file absolute, no vocabulary shipped": Hostile(
        lambda m, _: archive(with_json(_without_vocab(m), "tokenizer_config.json",
                                       vocab_file="/etc/passwd")),
        "tokenizer_config.json: 'vocab_file' is '/etc/passwd'"),
    "merges_file '../' to a neighbour": Hostile(
        lambda m, victim: archive(with_json(m, "tokenizer_config.json",
                                            merges_file=f"../{victim.name}/merges.txt")),
        "tokenizer_config.json: 'merges_file'"),
    "tokenizer_file into another folder": Hostile(
        lambda m, victim: archive(with_json(m, "tokenizer_config.json",
                                            tokenizer_file=f"{victim.name}/tokenizer.json")),
        "tokenizer_config.json: 'tokenizer_file'"),
    "vocab_file nested in special_tokens_map.json": Hostile(
        lambda m, _: archive(with_json(m, "special_tokens_map.json",
                                       extra={"vocab_file": ["/etc/passwd"]})),
        "special_tokens_map.json: 'extra.vocab_file[0]'"),
    "name_or_path absolute": Hostile(
        lambda m, victim: archive(with_json(m, "tokenizer_config.json", name_or_path=str(victim))),
        "tokenizer_config.json: 'name_or_path'"),
    "vocab_size 10^9 over 4 MB of weights": Hostile(_config(vocab_size=10**9),
                                                    "config.json does not match the weights"),
    "num_hidden_layers 10^6": Hostile(_config(num_hidden_layers=10**6),
                                      "'num_hidden_layers' is 1000000"),
    "attn_implementation from the Hub": Hostile(
        _config(attn_implementation="kernels-community/evil"), "'attn_implementation'"),
    "quantization_config": Hostile(_config(quantization_config={"quant_method": "bitsandbytes"}),
                                   "'quantization_config' asks for a quantizer"),
    "transformers_weights": Hostile(_config(transformers_weights="../x/model.safetensors"),
                                    "'transformers_weights'"),
    "deeply nested config.json": Hostile(
        lambda m, _: archive({**m, "config.json": b"[" * 100_000 + b"]" * 100_000}),
        "config.json nests deeper than 512 levels"),
    "5,000-digit integer in config.json": Hostile(
        lambda m, _: archive({**m, "config.json": b'{"vocab_size": ' + b"9" * 5000 + b"}"}),
        "config.json is not valid JSON"),
}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise LookupError(field)


def measured(request: Callable[[], Any], *, trace: bool = True) -> tuple[Any, int | None,
                                                                          int | None]:
    """The response, the peak of Python allocations during it (None unless `trace`: tracing
    every allocation slows the request severalfold), and the growth of this process's peak
    resident memory (None where /proc cannot reset the peak)."""
    if trace:
        gc.collect()  # (a quarter of a second in a test process: only where memory is asserted)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before: int | None = _status_kb("VmRSS:")
    except OSError:
        before = None
    traced_peak: int | None = None
    if trace:
        tracemalloc.start()
    try:
        response = request()
        if trace:
            _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()  # (nothing when it was not started)
    growth = (_status_kb("VmHWM:") - before) * 1024 if before is not None else None
    return response, traced_peak, growth


def stored(settings: Any) -> list[str]:
    """Everything under the models folder, leftovers (`.tmp-…`) included."""
    return sorted(p.name for p in settings.models_dir.iterdir()) if settings.models_dir.exists() \
        else []


def model_rows(settings: Any) -> list[str]:
    from app.kit.db import session_scope
    from app.models.tables import ModelRow

    with session_scope(settings.sqlalchemy_url) as session:
        return sorted(row.id for row in session.query(ModelRow))


@pytest.fixture(scope="module")
def teacher_archive(tiny_teacher_dir: Path) -> tuple[Members, bytes]:
    """The tiny teacher's files and their .tar.gz, built once: the neighbouring model every case
    registers first (gzip of its 4 MB of weights costs a quarter of a second)."""
    members = dir_members(tiny_teacher_dir)
    return members, archive(members)


# The longest case (half a minute on 2 cores) runs with `-m slow`; the other bounded ones stay.
SLOW_CASES = {"JSON of 10M empty values (40 MB)"}


@pytest.mark.parametrize("case", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES
                                  else name for name in CORPUS])
def test_hostile_archive_is_refused_and_nothing_is_stored(
    client: Any, auth: dict[str, str], settings: Any, teacher_archive: tuple[Members, bytes],
    case: str,
) -> None:
    # Given a neighbouring model already registered (what a traversal would reach for).
    members, victim_archive = teacher_archive
    victim = upload_archive(client, auth, victim_archive)
    assert victim.status_code == 201, victim.text
    victim_id = victim.json()["id"]
    hostile = CORPUS[case].build(members, settings.models_dir / victim_id)

    # When the hostile archive is uploaded (memory traced where it is asserted).
    bounded = CORPUS[case].bounded
    response, traced_peak, rss_growth = measured(lambda: upload_archive(client, auth, hostile),
                                                 trace=bounded)

    # Then: a 400 naming the problem, and nothing of it stored.
    error = assert_error(response, 400, code="invalid_model_archive", param="file")
    growth = f"{rss_growth / MB:.1f} MB" if rss_growth is not None else "n/a"
    traced = f"{traced_peak / MB:.1f} MB" if traced_peak is not None else "not traced"
    print(f"\n[{case}] {len(hostile):,} bytes -> {response.status_code} {error['message']!r}; "
          f"API peak: traced {traced}, RSS growth {growth}")
    assert CORPUS[case].needle in error["message"]
    assert stored(settings) == [victim_id]
    assert model_rows(settings) == [victim_id]
    listed = [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    assert listed == ["all-minilm-l6-v2", "smollm2-135m-instruct", victim_id]
    if bounded:
        assert traced_peak is not None and traced_peak < MEMORY_BOUND
        assert rss_growth is None or rss_growth < MEMORY_BOUND


def test_the_corpus_is_refused_only_for_its_flaw(
    client: Any, auth: dict[str, str], tiny_teacher_dir: Path,
) -> None:
    """The same builders with nothing hostile give a model that registers, so each refusal above
    is for its flaw alone: a sharded save inside its folder, allowed config keys, a folder, and
    a tokenizer config as transformers writes it (`model_max_length` of 1e30)."""
    members = dir_members(tiny_teacher_dir)
    fine = [
        archive(sharded(members, "model-00001-of-00001.safetensors")),
        archive(with_json(members, "config.json", attn_implementation="sdpa")),
        archive(with_json(members, "tokenizer_config.json", fast_tokenizer_files=[],
                          model_max_length=10**30)),  # transformers' "no limit", past 64 bits
        archive(with_json(members, "tokenizer_config.json", vocab_file="vocab.txt",
                          name_or_path="nreimers/MiniLM-L6-H384-uncased")),
        archive({f"teacher/{name}": data for name, data in members.items()}),
    ]
    for body in fine:
        response = upload_archive(client, auth, body)
        assert response.status_code == 201, response.text
