"""Vocabulary pruning (`student.prune_vocabulary`): the student keeps only the token ids its job's
data use, plus its tokenizer's special tokens, in its input embeddings and in its tokenizer.

Why: most of a small student's weights are its embedding matrix (a 4-layer, 128-wide student of
a 30,522-token BERT: 3.9M of its 4.8M parameters), while one task's data use a fraction of the
ids (SST-2: about 11.5k).

The kept ids keep their order and are numbered by rank, so [PAD] stays 0. The pruned student
computes exactly what it computed before on the job's data: each kept id keeps its embedding
row, and the pruned WordPiece tokenizer segments the job's words as before (greedy longest
match: every piece those words used is kept, and no piece appears that was not there before).
A word with a piece that was never used becomes the unknown token.

The ids are read from the encoded features the student trains and is evaluated on, so whatever
the task puts there is covered; and the kept set is a function of those features alone, so a
resumed job rebuilds the very shape its checkpoint was saved from. A text cut short by
`max_seq_length` in the middle of a word keeps only the pieces before the cut: the exported
tokenizer, given that whole text, may read the cut word as the unknown token.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distillation.config import JobConfig, Reporter
from distillation.data.vocab import Vocabulary, tokenizer_kind
from distillation.models.loading import load_config, load_tokenizer
from distillation.tasks.base import Problems, Task, TaskData
from distillation.training.loop import Features

PARAM = "student.prune_vocabulary"
PRUNED_TOKENIZER_DIR = "pruned_tokenizer"  # in the job's work directory
SUPPORTED_KIND = "WordPiece"


def used_ids(features: Iterable[Features], key: str = "input_ids") -> set[int]:
    """Every token id in the features' `key` lists."""
    ids: set[int] = set()
    for row in features:
        ids.update(map(int, row[key]))
    return ids


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"vocabulary pruning needs a tokenizer backed by the tokenizers library; "
                         f"{type(tokenizer).__name__} is not")
    data: dict[str, Any] = json.loads(backend.to_str())
    return data


def _processor_ids(processor: Mapping[str, Any] | None) -> list[int]:
    """The token ids a post-processor inserts ([CLS], [SEP], ...)."""
    if not processor:
        return []
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        return [int(i) for token in processor["special_tokens"].values() for i in token["ids"]]
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [int(processor["sep"][1]), int(processor["cls"][1])]
    if kind == "Sequence":
        return [i for p in processor["processors"] for i in _processor_ids(p)]
    return []


def _renumber_processor(processor: dict[str, Any] | None, new_id: Mapping[int, int]) -> None:
    if not processor:
        return
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for token in processor["special_tokens"].values():
            token["ids"] = [new_id[int(i)] for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for name in ("sep", "cls"):
            processor[name] = [processor[name][0], new_id[int(processor[name][1])]]
    elif kind == "Sequence":
        for part in processor["processors"]:
            _renumber_processor(part, new_id)


def _config_token_ids(config: PretrainedConfig) -> dict[str, int]:
    """The config's `*_token_id` entries that hold one id (pad_token_id, ...)."""
    return {name: value for name, value in config.to_dict().items()
            if name.endswith("_token_id") and isinstance(value, int) and value >= 0}


def kept_ids(used: Iterable[int], tokenizer: PreTrainedTokenizerBase,
             config: PretrainedConfig) -> list[int]:
    """The ids a pruned model keeps, in their old order: those the data use, the tokenizer's
    special tokens (the ones it names, its special added tokens, those its post-processor
    inserts) and every token id the model's config names."""
    data = _tokenizer_json(tokenizer)
    special = set(tokenizer.all_special_ids)
    special.update(int(t["id"]) for t in data.get("added_tokens") or [] if t.get("special"))
    special.update(_processor_ids(data.get("post_processor")))
    return sorted(set(used) | special | set(_config_token_ids(config).values()))


def prune_embeddings(model: PreTrainedModel, kept: Sequence[int]) -> None:
    """Keep only the `kept` rows of the model's input embeddings, numbered by their position in
    `kept`; the config's vocab_size and token ids follow. ValueError for a model whose output
    reads the vocabulary too (a language-model head), which this does not prune."""
    if model.get_output_embeddings() is not None:
        raise ValueError(f"vocabulary pruning prunes input embeddings only, and this "
                         f"{type(model).__name__} has output embeddings (a language-model head)")
    old = model.get_input_embeddings()
    if not isinstance(old, nn.Embedding):
        raise ValueError(f"vocabulary pruning needs an nn.Embedding input layer, not "
                         f"{type(old).__name__}")
    if kept and max(kept) >= old.num_embeddings:
        raise ValueError(f"token id {max(kept)} is beyond the model's {old.num_embeddings} "
                         "embedding rows")
    new_id = {old_id: n for n, old_id in enumerate(kept)}
    rows = old.weight.detach()[torch.tensor(list(kept), device=old.weight.device)].clone()
    # from_pretrained, not a new nn.Embedding: that would draw random weights and move the RNG,
    # which the rest of the run (and its resumes) should not see.
    new = nn.Embedding.from_pretrained(
        rows, freeze=False, max_norm=old.max_norm, norm_type=old.norm_type,
        scale_grad_by_freq=old.scale_grad_by_freq, sparse=old.sparse,
        padding_idx=new_id.get(old.padding_idx) if old.padding_idx is not None else None,
    )
    model.set_input_embeddings(new)
    model.config.vocab_size = len(kept)
    for name, value in _config_token_ids(model.config).items():
        setattr(model.config, name, new_id[value])


def prune_tokenizer(tokenizer: PreTrainedTokenizerBase, kept: Sequence[int],
                    save_dir: Path) -> PreTrainedTokenizerBase:
    """`tokenizer` with only the `kept` ids, numbered as `prune_embeddings` numbers them: saved
    to `save_dir` and loaded back from there, as `AutoTokenizer` loads the exported copy.
    ValueError unless it is a WordPiece tokenizer (BERT's)."""
    data = _tokenizer_json(tokenizer)
    kind = (data.get("model") or {}).get("type")
    if kind != SUPPORTED_KIND:
        raise ValueError(f"vocabulary pruning supports WordPiece tokenizers (BERT's) only; this "
                         f"tokenizer is {kind}")
    new_id = {old_id: n for n, old_id in enumerate(kept)}
    token_of = {int(i): token for token, i in data["model"]["vocab"].items()}
    added = {int(t["id"]) for t in data.get("added_tokens") or []}
    missing = [i for i in kept if i not in token_of and i not in added]
    if missing:
        raise ValueError(f"token ids {missing[:5]} are not in the tokenizer's vocabulary")
    data["model"]["vocab"] = {token_of[i]: new_id[i] for i in kept if i in token_of}
    if data["model"]["unk_token"] not in data["model"]["vocab"]:
        raise ValueError(f"the unknown token {data['model']['unk_token']!r} is not kept")
    data["added_tokens"] = [{**t, "id": new_id[int(t["id"])]}
                            for t in data.get("added_tokens") or [] if int(t["id"]) in new_id]
    _renumber_processor(data.get("post_processor"), new_id)
    if data.get("padding"):
        data["padding"]["pad_id"] = new_id[int(data["padding"]["pad_id"])]
    text = json.dumps(data, ensure_ascii=False)
    Tokenizer.from_str(text)  # the tokenizers library reads it back, or says what is wrong

    if save_dir.exists():
        shutil.rmtree(save_dir)  # a retried job writes it afresh, never over an older copy
    tokenizer.save_pretrained(save_dir)
    (save_dir / "tokenizer.json").write_text(text, encoding="utf-8")
    renumber_side_files(save_dir, [token_of.get(i) for i in kept], new_id)
    pruned = load_tokenizer(save_dir)
    if len(pruned) != len(kept):
        raise ValueError(f"the pruned tokenizer has {len(pruned)} tokens, not {len(kept)}")
    return pruned  # type: ignore[no-any-return]


def renumber_side_files(save_dir: Path, tokens: list[str | None],
                        new_id: Mapping[int, int]) -> None:
    """vocab.txt (the slow tokenizer's copy) and the added-token ids of tokenizer_config.json,
    where `save_pretrained` wrote them, in the new numbering."""
    vocab_txt = save_dir / "vocab.txt"
    if vocab_txt.is_file():
        if None in tokens:
            vocab_txt.unlink()  # added tokens beyond the vocabulary: tokenizer.json says it all
        else:
            vocab_txt.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    config_path = save_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in decoder.items()
                                              if int(k) in new_id}
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")


@dataclass
class PrunedVocabulary:
    """A pruned job: its data with the student's side re-numbered, and the vocabulary sizes."""

    data: TaskData
    before: int
    after: int

    def summary(self) -> dict[str, int]:
        """The report's `vocabulary` entry."""
        return {"pruned_from": self.before, "pruned_to": self.after}


def prune_job_vocabulary(config: JobConfig, task: Task, data: TaskData, student: PreTrainedModel,
                         reporter: Reporter) -> PrunedVocabulary:
    """Prune a job's student (built, not yet trained) to the ids of the examples it trains and
    is evaluated on; the returned data feed it the new ids (the teacher keeps its own)."""
    if task.vocabulary_pruning_refusal is not None:
        raise ValueError(f"{PARAM} is not available for {task.name}: "
                         f"{task.vocabulary_pruning_refusal}")
    side = data.student
    kept = kept_ids(used_ids([*side.train, *side.evaluation]), side.tokenizer, student.config)
    before = int(student.config.vocab_size)
    # The tokenizer first: it refuses the kinds it cannot prune before the model is touched.
    tokenizer = prune_tokenizer(side.tokenizer, kept, config.work_dir / PRUNED_TOKENIZER_DIR)
    prune_embeddings(student, kept)
    pruned = task.with_student_vocabulary(data, tokenizer,
                                          {old: n for n, old in enumerate(kept)})
    reporter.message(f"Pruned the student's vocabulary from {before:,} to {len(kept):,} ids: the "
                     "tokens the job's data use, and the special tokens.",
                     data={"vocabulary": {"pruned_from": before, "pruned_to": len(kept)}})
    return PrunedVocabulary(pruned, before, len(kept))


def prunes(wanted: bool | None, *, sized_to_target: bool, task: Task,
           tokenizer_kind: Callable[[], str | None]) -> bool:
    """The one rule for whether a job prunes its vocabulary (at creation and in the run): as
    `student.prune_vocabulary` says; unset, for a student sized to a target, when the task and
    the teacher's tokenizer (`tokenizer_kind()`, asked only then) allow it."""
    if wanted is not None:
        return wanted
    return (sized_to_target and task.vocabulary_pruning_refusal is None
            and tokenizer_kind() == SUPPORTED_KIND)


def should_prune(config: JobConfig, task: Task) -> bool:
    """Whether the job prunes (`prunes`, on the job's config)."""
    return prunes(config.student.prune_vocabulary, sized_to_target=config.student.target is not None,
                  task=task, tokenizer_kind=lambda: tokenizer_kind(config.teacher_path))


def pruned_size(data: TaskData, config: PretrainedConfig) -> int:
    """How many ids the student keeps once pruned (what `prune_job_vocabulary` will keep)."""
    side = data.student
    return len(kept_ids(used_ids([*side.train, *side.evaluation]), side.tokenizer, config))


def pruned_size_of_texts(model_dir: Path, examples: Iterable[tuple[str, str | None]], *,
                         max_length: int) -> int:
    """How many ids a student of `model_dir`'s vocabulary keeps once pruned to these
    (text, text pair or None) examples, read as they come (the API's estimate at job creation,
    for a student sized to a target)."""
    tokenizer = load_tokenizer(model_dir)
    used: set[int] = set()
    examples = iter(examples)
    while chunk := list(islice(examples, 4096)):
        pairs = [p or "" for _, p in chunk] if chunk[0][1] is not None else None
        encoded = tokenizer([t for t, _ in chunk], pairs, truncation=True, max_length=max_length)
        for ids in encoded["input_ids"]:
            used.update(ids)
    config = load_config(model_dir)
    return len(kept_ids(used, tokenizer, config))


def pruning_problems(task: Task, teacher: Vocabulary, student: Vocabulary | None) -> Problems:
    """Why a job of `task` cannot prune its student's vocabulary, each naming `PARAM` (the
    API asks at job creation): the task's reason, a `student.model` that reads another
    vocabulary than the teacher's, a tokenizer that is not WordPiece."""
    if task.vocabulary_pruning_refusal is not None:
        return [(PARAM, f"{PARAM} is not available for {task.name}: "
                        f"{task.vocabulary_pruning_refusal}")]
    read, who = teacher, "teacher"
    if student is not None and student.fingerprint is not None:
        if student.fingerprint != teacher.fingerprint:
            return [(PARAM, f"{PARAM} needs a student that reads the teacher's vocabulary (one "
                            "built from an architecture, or a student.model with the teacher's "
                            "tokenizer); this student.model's tokenizer has another token → id "
                            "map")]
        read, who = student, "student"
    kind = read.kind
    if kind != SUPPORTED_KIND:
        return [(PARAM, f"{PARAM} supports WordPiece tokenizers (BERT's) only; the "
                        f"{who}'s tokenizer "
                        f"is {kind or 'missing or unreadable'}")]
    return []
