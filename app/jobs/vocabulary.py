"""A job's models' vocabularies, read at job creation under the settings' limits: each model's
tokenizer files are read once per creation (`distillation.data.vocab` remembers the answer), and a
malformed or oversized vocabulary is a 400 naming the model, never a 500."""

from __future__ import annotations

from app.kit.errors import InvalidRequest
from app.models.service import ResolvedModel
from app.settings import Settings
from distillation.data.vocab import VocabLimits, Vocabulary, VocabularyError, read_vocabulary


def vocabulary_of(model: ResolvedModel, *, param: str, settings: Settings) -> Vocabulary:
    """The model's vocabulary; InvalidRequest naming `param` when it cannot be read."""
    limits = VocabLimits(max_bytes=settings.max_vocab_bytes,
                         max_entries=settings.max_vocab_entries)
    try:
        return read_vocabulary(model.path, limits)
    except VocabularyError as exc:
        raise InvalidRequest(f"{param} {model.ref!r}: its tokenizer's vocabulary cannot be used: "
                             f"{exc}.", param=param, code="invalid_tokenizer") from None
