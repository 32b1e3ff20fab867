"""Which vocabulary a model directory's tokenizer has, read from its files (no tokenizer loaded).

Token-level distillation compares the two models' distributions over the vocabulary position by
position, so a causal-LM or seq2seq student must read the teacher's vocabulary: the same token →
id map where both directories carry a tokenizer (`vocab_fingerprint`; `tasks.token` checks it).
Vocabulary pruning handles WordPiece tokenizers only, so it asks which kind one is
(`tokenizer_kind`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model", "sentencepiece.bpe.model",
                        "source.spm", "target.spm")


def _added_tokens(model_dir: Path) -> dict[str, int]:
    tokens: dict[str, int] = {}
    added = model_dir / "added_tokens.json"
    if added.is_file():
        tokens.update({str(k): int(v) for k, v in json.loads(added.read_text()).items()})
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        decoder = json.loads(config.read_text()).get("added_tokens_decoder") or {}
        tokens.update({str(v.get("content")): int(k) for k, v in decoder.items()})
    return tokens


def _vocab_map(model_dir: Path) -> dict[str, int] | None:
    """token → id from tokenizer.json, vocab.json or vocab.txt (added tokens included)."""
    fast = model_dir / "tokenizer.json"
    if fast.is_file():
        data = json.loads(fast.read_text())
        vocab = (data.get("model") or {}).get("vocab")
        mapping: dict[str, int] = {}
        if isinstance(vocab, dict):
            mapping = {str(k): int(v) for k, v in vocab.items()}
        elif isinstance(vocab, list):  # unigram: [[piece, score], ...]
            mapping = {str(entry[0]): i for i, entry in enumerate(vocab)}
        mapping.update({str(t["content"]): int(t["id"]) for t in data.get("added_tokens") or []})
        return mapping
    if (model_dir / "vocab.json").is_file():
        mapping = {str(k): int(v)
                   for k, v in json.loads((model_dir / "vocab.json").read_text()).items()}
    elif (model_dir / "vocab.txt").is_file():
        lines = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        mapping = {token: i for i, token in enumerate(lines)}
    else:
        return None
    return {**mapping, **_added_tokens(model_dir)}


def vocab_fingerprint(model_dir: str | Path) -> str | None:
    """A hash of the directory's tokenizer vocabulary (its token → id map, or its SentencePiece
    model file); None when the directory has no tokenizer files or they cannot be read."""
    directory = Path(model_dir)
    try:
        mapping = _vocab_map(directory)
        if mapping is not None:
            text = json.dumps(sorted(mapping.items(), key=lambda kv: kv[1]), ensure_ascii=False)
            return "vocab:" + hashlib.sha256(text.encode()).hexdigest()
        for name in _SENTENCEPIECE_FILES:
            if (directory / name).is_file():
                return "spm:" + hashlib.sha256((directory / name).read_bytes()).hexdigest()
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return None


def tokenizer_kind(model_dir: str | Path) -> str | None:
    """The kind of the directory's tokenizer model, as the `tokenizers` library names it
    ("WordPiece", "BPE", "Unigram", "WordLevel"), read from its files; None when there are none.

    Without a tokenizer.json: a vocab.txt alone is BERT's WordPiece, vocab.json (+ merges.txt) a
    BPE, a SentencePiece model file a Unigram (or BPE) SentencePiece model, said as such."""
    directory = Path(model_dir)
    fast = directory / "tokenizer.json"
    try:
        if fast.is_file():
            kind = (json.loads(fast.read_text()).get("model") or {}).get("type")
            return str(kind) if kind else None
    except (OSError, ValueError, AttributeError):
        return None
    if any((directory / name).is_file() for name in _SENTENCEPIECE_FILES):
        return "SentencePiece"
    if (directory / "vocab.json").is_file():
        return "BPE"
    if (directory / "vocab.txt").is_file():
        return "WordPiece"
    return None
