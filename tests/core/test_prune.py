"""Vocabulary pruning on a tiny BERT classifier with a small WordPiece vocabulary: the pruned
student predicts exactly as before on the data it was pruned for, reloads through the Auto
classes, and reads words it never saw as [UNK]; kinds it cannot prune are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import BPE
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizer,
    PreTrainedTokenizerFast,
)

from distillation.data.vocab import tokenizer_kind
from distillation.students.prune import (
    kept_ids,
    prune_embeddings,
    prune_tokenizer,
    renumber_side_files,
    used_ids,
)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# As in BERT's vocabulary, unused tokens sit between [PAD] and the other special tokens, so
# pruning moves [UNK], [CLS], [SEP] and [MASK] to new ids.
VOCAB = ["[PAD]", "zebra", "un", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "film", "plot",
         "was", "is", "good", "bad", "dull", "play", "##ing", "##ed", "##seen", "##s", ".", ",",
         "z", "##e", "##b", "##r", "##a"]
# The job's data: "zebra", "un", "##ed", "##seen", "z" and most "##x" pieces are never used.
TEXTS = ["the film was good .", "a dull plot", "playing the film", "the plots is bad"]
PAIRS = [("a good film , playing", "the plot was dull")]


def wordpiece_tokenizer() -> Any:
    """A real WordPiece tokenizer (BERT's normaliser, pre-tokeniser and template) over VOCAB."""
    return BertTokenizer(vocab={t: i for i, t in enumerate(VOCAB)})


def encode(tokenizer: Any) -> dict[str, Any]:
    """The job's texts and text pairs, batched and padded, as one batch each."""
    return {"single": tokenizer(TEXTS, padding=True, return_tensors="pt"),
            "pair": tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                              return_tensors="pt")}


def logits(model: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: model(**batch).logits for name, batch in encode(tokenizer).items()}


@pytest.fixture
def pruned(tmp_path: Path) -> dict[str, Any]:
    """A tiny classifier and its tokenizer, before and after pruning to the job's ids."""
    tokenizer = wordpiece_tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=2)).eval()
    before = logits(model, tokenizer)
    features = [{"input_ids": ids} for batch in encode(tokenizer).values()
                for ids in batch["input_ids"].tolist()]

    kept = kept_ids(used_ids(features), tokenizer, model.config)
    small = prune_tokenizer(tokenizer, kept, tmp_path / "tokenizer")
    prune_embeddings(model, kept)
    return {"tokenizer": tokenizer, "model": model, "before": before, "kept": kept,
            "small": small, "dir": tmp_path}


def test_kept_ids_are_the_used_ones_and_the_special_tokens_in_their_old_order(
    pruned: dict[str, Any],
) -> None:
    tokenizer, kept = pruned["tokenizer"], pruned["kept"]
    tokens = tokenizer.convert_ids_to_tokens(kept)
    assert tokens[:5] == SPECIAL  # [PAD] stays 0
    assert {"the", "film", "play", "##ing", "##s", ",", "dull"} <= set(tokens)
    assert not {"zebra", "un", "##ed", "##seen", "z", "##r"} & set(tokens)
    assert kept == sorted(kept) and len(kept) < len(tokenizer)


def test_pruned_model_predicts_exactly_as_before_on_the_jobs_data(pruned: dict[str, Any]) -> None:
    model, small, kept = pruned["model"], pruned["small"], pruned["kept"]
    assert model.config.vocab_size == len(kept) == len(small)
    assert model.get_input_embeddings().weight.shape[0] == len(kept)
    assert model.config.pad_token_id == small.pad_token_id == 0

    after = logits(model, small)

    for name in ("single", "pair"):
        torch.testing.assert_close(after[name], pruned["before"][name], rtol=0, atol=1e-6)
    # the same segmentation, ids renumbered: [CLS]/[SEP] and segment ids included
    old, new = encode(pruned["tokenizer"]), encode(small)
    for name in ("single", "pair"):
        renumbered = [[kept.index(i) for i in row] for row in old[name]["input_ids"].tolist()]
        assert new[name]["input_ids"].tolist() == renumbered
        assert new[name]["token_type_ids"].tolist() == old[name]["token_type_ids"].tolist()


def test_exported_directory_reloads_and_reads_unseen_words_as_unk(pruned: dict[str, Any]) -> None:
    model, small, out = pruned["model"], pruned["small"], pruned["dir"] / "export"
    model.save_pretrained(out, safe_serialization=True)
    small.save_pretrained(out)

    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)

    assert tokenizer_kind(out) == "WordPiece" and len(tokenizer) == len(pruned["kept"])
    # tokenizer.json alone (as the tokenizers library, or another transformers version, reads
    # it), the one pruning wrote and the exported one, encodes as the loaded tokenizer does
    pair_ids = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS])["input_ids"]
    for directory in (pruned["dir"] / "tokenizer", out):
        backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
        assert [backend.encode(text).ids for text in TEXTS] == tokenizer(TEXTS)["input_ids"]
        assert [backend.encode(a, b).ids for a, b in PAIRS] == pair_ids
    after = logits(reloaded, tokenizer)
    for name in ("single", "pair"):
        torch.testing.assert_close(after[name], pruned["before"][name], rtol=0, atol=1e-6)
    # Given words the unpruned tokenizer knows but the job's data never used,
    unseen = "zebra played unseen film"
    assert pruned["tokenizer"].tokenize(unseen) == ["zebra", "play", "##ed", "un", "##seen",
                                                    "film"]
    # then the pruned one reads each as [UNK] (a word with any piece gone is one [UNK]).
    assert tokenizer.convert_ids_to_tokens(tokenizer(unseen)["input_ids"]) == [
        "[CLS]", "[UNK]", "[UNK]", "[UNK]", "film", "[SEP]"]


def test_other_tokenizer_kinds_and_language_model_heads_are_refused(tmp_path: Path) -> None:

    bpe = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(BPE(vocab={"<unk>": 0, "a": 1, "b": 2, "ab": 3},
                                       merges=[("a", "b")], unk_token="<unk>")),
        unk_token="<unk>")
    with pytest.raises(ValueError, match=r"WordPiece tokenizers .* only; this tokenizer is BPE"):
        prune_tokenizer(bpe, [0, 3], tmp_path / "bpe")
    assert not (tmp_path / "bpe").exists()

    masked_lm = BertForMaskedLM(BertConfig(vocab_size=28, hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="has output embeddings"):
        prune_embeddings(masked_lm, [0, 1, 2])
    assert masked_lm.get_input_embeddings().num_embeddings == 28


def test_slow_tokenizer_files_are_renumbered_where_they_were_written(tmp_path: Path) -> None:
    # Given the files transformers 4 writes beside tokenizer.json (transformers 5 writes neither)
    (tmp_path / "vocab.txt").write_text("[PAD]\nzebra\n[UNK]\nfilm\n")
    decoder = {str(i): {"content": t, "special": True} for i, t in ((0, "[PAD]"), (2, "[UNK]"))}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": decoder, "tokenizer_class": "BertTokenizer"}))

    # When ids 0, 2 and 3 are kept
    renumber_side_files(tmp_path, ["[PAD]", "[UNK]", "film"], {0: 0, 2: 1, 3: 2})

    # Then both follow the new numbering
    assert (tmp_path / "vocab.txt").read_text() == "[PAD]\n[UNK]\nfilm\n"
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"] == {"0": decoder["0"], "1": decoder["2"]}
    assert config["tokenizer_class"] == "BertTokenizer"
