"""Tiny language models and toy text tasks for the causal-LM and seq2seq tests.

The models read a WordPiece tokenizer built here over the toy tasks' words (20 tokens, [CLS] as
beginning- and [SEP] as end-of-sequence token): no download, and a vocabulary small enough that
a few dozen steps teach the teacher something.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "one", "two", "three", "sun", "moon",
         "star"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def lm_tokenizer() -> Any:
    from transformers import BertTokenizer

    vocab = {token: i for i, token in enumerate([*SPECIAL, "copy", "the", "a", *WORDS])}
    return BertTokenizer(vocab=vocab, bos_token="[CLS]", eos_token="[SEP]")


def _special(tokenizer: Any) -> dict[str, int]:
    return {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def save_gpt2(out: Path, *, seed: int = 0, tokenizer: Any = None, **sizes: Any) -> Path:
    """A GPT-2 LM (2 layers, width 32 unless `sizes` say otherwise) with the MiniLM tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tokenizer or lm_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(**{"vocab_size": len(tokenizer), "n_embd": 32, "n_layer": 2,
                           "n_head": 2, "n_positions": 64, **_special(tokenizer), **sizes})
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def save_t5(out: Path, *, seed: int = 0, **sizes: Any) -> Path:
    """A T5 encoder-decoder (2 + 2 layers, width 32) with the MiniLM tokenizer."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = lm_tokenizer()
    torch.manual_seed(seed)
    config = T5Config(**{
        "vocab_size": len(tokenizer), "d_model": 32, "d_ff": 64, "d_kv": 16, "num_layers": 2,
        "num_heads": 2, "decoder_start_token_id": tokenizer.pad_token_id,
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.sep_token_id, **sizes,
    })
    T5ForConditionalGeneration(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def copy_records(n: int, *, seed: int = 0) -> list[dict[str, str]]:
    """prompt "copy a b c" → completion "a b c"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        rows.append({"prompt": "copy " + " ".join(words), "completion": " ".join(words)})
    return rows


def reverse_records(n: int, *, seed: int = 0) -> list[dict[str, str]]:
    """source "a b c" → target "c b a"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        rows.append({"source": " ".join(words), "target": " ".join(reversed(words))})
    return rows


def permute_vocab(model_dir: Path) -> Path:
    """Swap the ids of two tokens in a saved tokenizer: the same size, another vocabulary."""
    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab["cat"], vocab["dog"] = vocab["dog"], vocab["cat"]
    path.write_text(json.dumps(data))
    for name in ("vocab.txt",):  # a slow-tokenizer copy, when one was written
        (model_dir / name).unlink(missing_ok=True)
    return model_dir


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chat_tokenizer() -> Any:
    """A byte-level BPE tokenizer (GPT-2's and SmolLM2's kind) trained here on the toy words and
    the chat roles, with a ChatML chat template; `<|im_end|>` ends a turn and a sequence."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(["copy", "the", "a", *WORDS, "user", "assistant", "system"])] * 4
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=CHAT_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)


def save_chat_llama(out: Path, *, seed: int = 0, tokenizer: Any = None, **sizes: Any) -> Path:
    """A Llama chat model (2 layers, width 32, 4 heads / 2 key-value heads unless `sizes` say
    otherwise, tied embeddings as SmolLM2's) with `chat_tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or chat_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(**{
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, **sizes})
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def chat_records(n: int, *, seed: int = 0, answered: bool = True) -> list[dict[str, Any]]:
    """The copy task as chat: user "copy a b c" → assistant "a b c" (`answered` False: the
    user's turn only, a prompt the teacher answers)."""
    rows: list[dict[str, Any]] = []
    for row in copy_records(n, seed=seed):
        messages = [{"role": "user", "content": row["prompt"]}]
        if answered:
            messages.append({"role": "assistant", "content": row["completion"]})
        rows.append({"messages": messages})
    return rows
