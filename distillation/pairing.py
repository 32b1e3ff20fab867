"""Checks of a teacher–student pair, run by the API at job creation and by the engine again.

Token-level distillation compares the two models' distributions over the vocabulary position by
position, so a causal-LM or seq2seq student must be the teacher's kind of model and read the
teacher's vocabulary: the same size and, where both directories carry a tokenizer, the same
token → id map (`vocab_fingerprint`). Layer losses need both models to expose comparable
hidden states. Problems come back as (param, message), like `checks.check_losses`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distillation.checks import as_spec
from distillation.config import LossSpec
from distillation.inspect import BASE_TASK, ModelInfo
from distillation.tasks import CLASSIFICATION, SEQ2SEQ, TOKEN_TASKS, can_serve

HIDDEN_LOSSES = ("hidden_mse", "attention_mse", "cosine")
# Row-wise logit terms that make no sense over a vocabulary, with the reason.
NOT_FOR_TOKENS = {
    "logit": "the logit margin loss compares a classifier's per-class margins and does not scale "
             "to a vocabulary of tokens; use kl, reverse_kl, jsd, mse_logits or ce",
}
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


def _kind(info: ModelInfo) -> str:
    return "an encoder-decoder (seq2seq)" if info.is_encoder_decoder else "a decoder-only"


def check_token_pair(
    task: str,
    teacher: ModelInfo,
    student: ModelInfo | None,
    *,
    teacher_vocab: str | None = None,
    student_vocab: str | None = None,
) -> list[tuple[str, str]]:
    """Problems with a token-level task's teacher and student model (None: built from the
    teacher's architecture, which shares everything)."""
    if task not in TOKEN_TASKS:
        return []
    problems: list[tuple[str, str]] = []
    if teacher.task == BASE_TASK and not can_serve(
        task, teacher.model_type, is_encoder_decoder=teacher.is_encoder_decoder
    ):
        problems.append(("teacher.model", f"teacher.model: a base {teacher.model_type} model "
                         f"cannot be loaded as a {task} model; use a "
                         f"{'seq2seq (encoder-decoder)' if task == SEQ2SEQ else 'causal'} "
                         "language model"))
    if student is None:
        return problems
    if student.is_encoder_decoder != teacher.is_encoder_decoder:
        return [*problems, ("student.model", f"student.model is {_kind(student)} model but "
                            f"the teacher is {_kind(teacher)} model: token-level distillation "
                            "needs a student of the teacher's kind")]
    if student.task not in (BASE_TASK, task) or (student.task == BASE_TASK and not can_serve(
        task, student.model_type, is_encoder_decoder=student.is_encoder_decoder
    )):
        problems.append(("student.model", f"student.model is a {student.task} "
                         f"{student.model_type} model; a {task} job needs a {task} student"))
    if student.vocab_size != teacher.vocab_size:
        problems.append(("student.model", f"student.model has a vocabulary of "
                         f"{student.vocab_size} tokens, the teacher {teacher.vocab_size}: "
                         "token-level distillation needs the teacher's vocabulary; use a "
                         "student built with the teacher's tokenizer, or student.architecture"))
    elif teacher_vocab and student_vocab and teacher_vocab != student_vocab:
        problems.append(("student.model", "student.model's tokenizer maps tokens to ids "
                         "differently from the teacher's: token-level distillation needs the "
                         "teacher's vocabulary; use a student built with the teacher's "
                         "tokenizer, or student.architecture"))
    return problems


def check_pair_losses(
    task: str,
    specs: Sequence[LossSpec | Mapping[str, Any]],
    teacher: ModelInfo,
    student: ModelInfo | None,
    *,
    same_tokenizer: bool = True,
) -> list[tuple[str, str]]:
    """Problems with loss terms that the task or the pair of models cannot serve, each naming
    `distillation.losses[i].type`."""
    problems: list[tuple[str, str]] = []
    pair = [("teacher", teacher)] + ([("student", student)] if student is not None else [])
    for k, raw in enumerate(specs):
        spec = as_spec(raw)
        param = f"distillation.losses[{k}].type"
        if task in TOKEN_TASKS and spec.type in NOT_FOR_TOKENS:
            problems.append((param, f"{param}: {spec.type} is not available for {task}: "
                             f"{NOT_FOR_TOKENS[spec.type]}"))
        if spec.type not in HIDDEN_LOSSES:
            continue
        blank = [f"the {side} ({info.model_type})" for side, info in pair
                 if info.num_layers <= 0 or info.hidden_size <= 0]
        if blank:
            problems.append((param, f"{param}: {spec.type} compares hidden states, but "
                             f"{' and '.join(blank)} reports no transformer layers"))
        elif student is not None and student.is_encoder_decoder != teacher.is_encoder_decoder:
            problems.append((param, f"{param}: {spec.type} compares the hidden states of two "
                             f"models of one kind; the teacher is {_kind(teacher)} model and "
                             f"the student {_kind(student)} one"))
        elif task == CLASSIFICATION and any(info.is_encoder_decoder for _, info in pair):
            problems.append((param, f"{param}: {spec.type} is not available for "
                             "encoder-decoder classifiers (they have no single stack of hidden "
                             "states); use kl, ce or mse_logits"))
        elif not same_tokenizer and (spec.type != "cosine" or spec.pooling == "mean"):
            problems.append((param, f"{param}: {spec.type} compares token positions, and the "
                             "student tokenises differently from the teacher; use a student "
                             "with the teacher's tokenizer, or cosine with pooling cls"))
    return problems
