"""Which vocabulary a model directory's tokenizer has, read from its files (no tokenizer loaded).

Token-level distillation compares the two models' distributions over the vocabulary position by
position, so a causal-LM or seq2seq student must read the teacher's vocabulary: the same token →
id map where both directories carry a tokenizer (`vocab_fingerprint`; `tasks.token` checks it).
Vocabulary pruning handles WordPiece tokenizers only, so it asks which kind one is
(`tokenizer_kind`).

`tokenizer.json` runs to tens of MB, mostly merges the answer does not need: parsed whole it takes
1-2 GB, so it is read as a stream, once (`read_vocabulary` remembers the answer, a refusal too, for
files that have not changed), under a size and an entry limit; a malformed vocabulary is a
`VocabularyError` naming what is wrong, never an IndexError.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import ijson

from distillation.models.files import MAX_JSON_BYTES, UnsafeModel, read_json

_SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
                        "source.spm", "target.spm")
_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "added_tokens.json",
          "tokenizer_config.json", *_SENTENCEPIECE_FILES)


class VocabularyError(ValueError):
    """A tokenizer vocabulary that is malformed or past a limit (the message says which)."""


@dataclass(frozen=True)
class VocabLimits:
    """How large a vocabulary file may be, and how many tokens it may hold."""

    max_bytes: int = MAX_JSON_BYTES
    max_entries: int = 10_000_000


@dataclass(frozen=True)
class Vocabulary:
    """A directory's tokenizer: its kind ("WordPiece", "BPE", ...) and a hash of its token → id
    map (or of its SentencePiece model); None where the directory has no tokenizer files."""

    kind: str | None
    fingerprint: str | None


def read_vocabulary(model_dir: str | Path, limits: VocabLimits | None = None) -> Vocabulary:
    """The directory's vocabulary, each file read once as a stream (VocabularyError when it is
    malformed or past `limits`); an unchanged directory is answered from memory."""
    directory = Path(os.path.realpath(model_dir))
    stamp = tuple(_stamp(directory / name) for name in _FILES)
    answer = _cached(directory, stamp, limits or VocabLimits())
    if isinstance(answer, str):
        raise VocabularyError(answer)
    return answer


def vocab_fingerprint(model_dir: str | Path) -> str | None:
    """A hash of the directory's tokenizer vocabulary (its token → id map, or its SentencePiece
    model file); None when the directory has no tokenizer files."""
    return read_vocabulary(model_dir).fingerprint


def tokenizer_kind(model_dir: str | Path) -> str | None:
    """The kind of the directory's tokenizer model, as the `tokenizers` library names it
    ("WordPiece", "BPE", "Unigram", "WordLevel"), read from its files; None when there are none.

    Without a tokenizer.json: a vocab.txt alone is BERT's WordPiece, vocab.json (+ merges.txt) a
    BPE, a SentencePiece model file a Unigram (or BPE) SentencePiece model, said as such."""
    return read_vocabulary(model_dir).kind


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _cached(directory: Path, stamp: tuple[Any, ...], limits: VocabLimits) -> Vocabulary | str:
    # A refusal is remembered as its message, so a failing job creation costs one parse only.
    del stamp  # part of the key: a changed file is read again
    try:
        return _read(directory, limits)
    except (VocabularyError, UnsafeModel) as exc:
        return str(exc)
    except OSError as exc:
        return f"the tokenizer files cannot be read ({exc.strerror})"


def _read(directory: Path, limits: VocabLimits) -> Vocabulary:
    fast = directory / "tokenizer.json"
    if fast.is_file():
        kind, mapping = _tokenizer_json(fast, limits)
        return Vocabulary(kind=kind, fingerprint=_hash(mapping))
    spm = next((directory / n for n in _SENTENCEPIECE_FILES if (directory / n).is_file()), None)
    if (directory / "vocab.json").is_file():
        mapping = _vocab_json(directory / "vocab.json", limits)
        kind = "BPE"
    elif (directory / "vocab.txt").is_file():
        mapping = _vocab_txt(directory / "vocab.txt", limits)
        kind = "WordPiece"
    elif spm is not None:
        _check_size(spm, limits)
        digest = hashlib.sha256()
        with spm.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return Vocabulary(kind="SentencePiece", fingerprint="spm:" + digest.hexdigest())
    else:
        return Vocabulary(kind=None, fingerprint=None)
    if spm is not None:
        kind = "SentencePiece"
    mapping.update(_added_tokens(directory))
    return Vocabulary(kind=kind, fingerprint=_hash(mapping))


def _hash(mapping: dict[str, int]) -> str:
    """sha256 of the JSON list of [token, id] pairs in id order, written piece by piece."""
    digest = hashlib.sha256(b"[")
    for n, token in enumerate(sorted(mapping, key=mapping.__getitem__)):
        digest.update((", " if n else "").encode()
                      + json.dumps([token, mapping[token]], ensure_ascii=False).encode())
    digest.update(b"]")
    return "vocab:" + digest.hexdigest()


def _check_size(path: Path, limits: VocabLimits) -> None:
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise VocabularyError(f"{path.name} is {size} bytes; tokenizer files over "
                              f"{limits.max_bytes} bytes are not accepted")


def _id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VocabularyError(f"{what} is {str(value)[:50]!r}, not a token id")
    return value


def _add(mapping: dict[str, int], token: str, token_id: int, limits: VocabLimits,
         what: str) -> None:
    mapping[token] = token_id
    if len(mapping) > limits.max_entries:
        raise VocabularyError(f"{what} holds more than {limits.max_entries} tokens")


def _events(path: Path, limits: VocabLimits) -> Iterator[tuple[str, str, Any]]:
    """ijson's (prefix, event, value) of a JSON file under the size limit; VocabularyError when
    it is not JSON."""
    _check_size(path, limits)
    with path.open("rb") as handle:
        try:
            yield from ijson.parse(handle, use_float=True)
        except (ijson.JSONError, UnicodeDecodeError, ValueError) as exc:
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise VocabularyError(f"{path.name} is not valid JSON ({first})") from exc


def _tokenizer_json(path: Path, limits: VocabLimits) -> tuple[str | None, dict[str, int]]:
    """`model.type` and the token → id map of `model.vocab` (a {token: id} object, or a unigram
    [[piece, score], ...] list) with `added_tokens`, in one pass that skips everything else."""
    what = "tokenizer.json: model.vocab"
    kind: str | None = None
    mapping: dict[str, int] = {}
    added: dict[str, int] = {}
    depth = 0
    vocab: str | None = None  # "map" or "list" once model.vocab has begun
    pending: str | None = None  # a map vocab's token awaiting its id
    piece: str | None = None  # a list vocab entry's piece
    position = 0  # within a list vocab entry
    entry: dict[str, Any] = {}  # an added token
    for prefix, event, value in _events(path, limits):
        if event in ("start_map", "start_array"):
            depth += 1
        if pending is not None:  # the value after a map vocab's key
            _add(mapping, pending, _id(value,
                                        f"{what}[{pending[:50]!r}]"), limits, what)
            pending = None
            continue
        if prefix == "model.type" and depth == 2 and event == "string":
            kind = str(value)
        elif prefix == "model.vocab" and depth == 3 and event in ("start_map", "start_array"):
            vocab = "map" if event == "start_map" else "list"
        elif vocab == "map" and prefix == "model.vocab" and depth == 3 and event == "map_key":
            pending = str(value)
        elif vocab == "list" and prefix == "model.vocab.item" and depth == 4:
            if event == "start_array":
                piece, position = None, 0
            elif event == "end_array":
                if piece is None:
                    raise VocabularyError(f"{what}[{len(mapping)}] is not a [piece, score] pair")
                _add(mapping, piece, len(mapping), limits, what)
        elif vocab == "list" and prefix == "model.vocab.item.item" and depth in (4, 5):
            if depth == 4 and position == 0 and event == "string":
                piece = str(value)
            if depth == 4 or event in ("start_map", "start_array"):
                position += 1
        elif vocab == "list" and prefix == "model.vocab.item" and depth == 3:
            if event != "end_array":
                raise VocabularyError(f"{what}[{len(mapping)}] is not a [piece, score] pair")
        elif prefix.startswith("added_tokens.item") and depth == 3:
            if event == "start_map":
                entry = {}
            elif event in ("string", "number") and prefix in ("added_tokens.item.content",
                                                              "added_tokens.item.id"):
                entry[prefix.rsplit(".", 1)[1]] = value
            elif event == "end_map":
                if not isinstance(entry.get("content"), str):
                    raise VocabularyError("tokenizer.json: an added token has no 'content'")
                _add(added, entry["content"], _id(entry.get("id"), "tokenizer.json: an added "
                                                  "token's id"), limits, "tokenizer.json")
        if event in ("end_map", "end_array"):
            if vocab is not None and depth == 3 and prefix == "model.vocab":
                vocab = "done"
            depth -= 1
    mapping.update(added)
    return kind, mapping


def _vocab_json(path: Path, limits: VocabLimits) -> dict[str, int]:
    mapping: dict[str, int] = {}
    pending: str | None = None
    for prefix, event, value in _events(path, limits):
        if pending is not None:
            _add(mapping, pending, _id(value,
                                        f"vocab.json[{pending[:50]!r}]"), limits, "vocab.json")
            pending = None
        elif prefix == "" and event == "map_key":
            pending = str(value)
        elif prefix == "" and event == "start_array":
            raise VocabularyError("vocab.json is not a {token: id} object")
    return mapping


def _vocab_txt(path: Path, limits: VocabLimits) -> dict[str, int]:
    _check_size(path, limits)
    mapping: dict[str, int] = {}
    with path.open(encoding="utf-8", newline="\n") as handle:
        try:
            for n, line in enumerate(handle):
                if len(mapping) >= limits.max_entries:
                    raise VocabularyError(f"vocab.txt holds more than {limits.max_entries} tokens")
                mapping[line[:-1] if line.endswith("\n") else line] = n
        except UnicodeDecodeError as exc:
            raise VocabularyError("vocab.txt is not UTF-8") from exc
    return mapping


def _added_tokens(directory: Path) -> dict[str, int]:
    tokens: dict[str, int] = {}
    if (directory / "added_tokens.json").is_file():
        data = read_json(directory / "added_tokens.json")
        if not isinstance(data, dict):
            raise VocabularyError("added_tokens.json is not a {token: id} object")
        tokens.update({str(k): _id(v, f"added_tokens.json[{str(k)[:50]!r}]")
                       for k, v in data.items()})
    if (directory / "tokenizer_config.json").is_file():
        config = read_json(directory / "tokenizer_config.json")
        decoder = (config.get("added_tokens_decoder") if isinstance(config, dict) else None) or {}
        if not isinstance(decoder, dict):
            raise VocabularyError("tokenizer_config.json: added_tokens_decoder is not an object")
        for key, value in decoder.items():
            if not isinstance(value, dict) or not str(key).isdigit():
                raise VocabularyError(f"tokenizer_config.json: added_tokens_decoder[{key!r}] is "
                                      "not {content, ...} under a token id")
            tokens[str(value.get("content"))] = int(key)
    return tokens


__all__ = ["VocabLimits", "Vocabulary", "VocabularyError", "read_vocabulary",
           "tokenizer_kind", "vocab_fingerprint"]
