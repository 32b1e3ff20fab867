"""`read_vocabulary`: one streamed pass over tokenizer.json, bounded, the same fingerprint as a
whole parse, and a malformed vocabulary refused by name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from distillation.data.vocab import VocabLimits, VocabularyError, read_vocabulary


def _whole_parse_fingerprint(tokenizer_json: Path) -> str:
    """The fingerprint as a whole parse computes it (the map vocab, then the added tokens)."""
    data = json.loads(tokenizer_json.read_text())
    mapping = {str(k): int(v) for k, v in data["model"]["vocab"].items()}
    mapping.update({t["content"]: t["id"] for t in data.get("added_tokens") or []})
    text = json.dumps(sorted(mapping.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return "vocab:" + hashlib.sha256(text.encode()).hexdigest()


def test_the_stream_reads_what_a_whole_parse_reads(tiny_teacher_dir: Path) -> None:
    vocabulary = read_vocabulary(tiny_teacher_dir)

    assert vocabulary.kind == "WordPiece"
    assert vocabulary.fingerprint == _whole_parse_fingerprint(tiny_teacher_dir / "tokenizer.json")


@pytest.mark.parametrize(("tokenizer", "limits", "needle"), [
    ({"model": {"type": "Unigram", "vocab": [[], ["a", 0.0]]}}, None, r"model\.vocab\[0\]"),
    ({"model": {"type": "Unigram", "vocab": ["a"]}}, None, r"model\.vocab\[0\]"),
    ({"model": {"type": "BPE", "vocab": {"a": [1]}}}, None, r"model\.vocab\['a'\]"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": 1}]}, None,
     "added token has no 'content'"),
    ({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}}}, VocabLimits(max_entries=2),
     "more than 2 tokens"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}}}, VocabLimits(max_bytes=10), "over 10 bytes"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}}, "x": "\u00e9" * 3}, None, None),
])
def test_a_malformed_or_oversized_vocabulary_is_refused(
    tmp_path: Path, tokenizer: dict[str, object], limits: VocabLimits | None, needle: str | None,
) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    if needle is None:
        assert read_vocabulary(tmp_path, limits).kind == "BPE"
        return
    with pytest.raises(VocabularyError, match=needle):
        read_vocabulary(tmp_path, limits)
    # A refusal is remembered, and refused again, until the file changes.
    with pytest.raises(VocabularyError, match=needle):
        read_vocabulary(tmp_path, limits)
