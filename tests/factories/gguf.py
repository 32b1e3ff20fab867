"""GGUF files written by the tests: the tiny Llama chat model of `tests.factories.lm` as llama.cpp's
converter writes it (the `gguf` package's writer), and where each header field of such a file
lies, to make hostile copies of it byte by byte."""

from __future__ import annotations

import json
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Hugging Face Llama weight names → llama.cpp's (`{n}`: the layer).
LLAMA_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{n}.self_attn.q_proj.weight": "blk.{n}.attn_q.weight",
    "model.layers.{n}.self_attn.k_proj.weight": "blk.{n}.attn_k.weight",
    "model.layers.{n}.self_attn.v_proj.weight": "blk.{n}.attn_v.weight",
    "model.layers.{n}.self_attn.o_proj.weight": "blk.{n}.attn_output.weight",
    "model.layers.{n}.mlp.gate_proj.weight": "blk.{n}.ffn_gate.weight",
    "model.layers.{n}.mlp.up_proj.weight": "blk.{n}.ffn_up.weight",
    "model.layers.{n}.mlp.down_proj.weight": "blk.{n}.ffn_down.weight",
    "model.layers.{n}.input_layernorm.weight": "blk.{n}.attn_norm.weight",
    "model.layers.{n}.post_attention_layernorm.weight": "blk.{n}.ffn_norm.weight",
}


def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's reordering of q/k rows (`convert_hf_to_gguf.py`, LlamaModel.permute): its
    rotary embedding pairs neighbouring dimensions, transformers' pairs the two halves."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_name(hf_name: str) -> str | None:
    parts = hf_name.split(".")
    layer = next((p for p in parts if p.isdigit()), None)
    pattern = hf_name.replace(f".{layer}.", ".{n}.") if layer is not None else hf_name
    target = LLAMA_NAMES.get(pattern)
    return target.format(n=layer) if target is not None else None


def write_llama_gguf(model_dir: Path, out: Path, *, weight_type: Any = None,
                     architecture: str = "llama", tokenizer: bool = True,
                     skip: Collection[str] = (), **config_changes: Any) -> Path:
    """The Llama model saved at `model_dir` (config, safetensors, a byte-level BPE tokenizer with
    a chat template) as one GGUF file: 2-D weights as `weight_type` (a GGMLQuantizationType;
    default F32, which dequantises to exactly the model's values), norms as F32.

    For hostile copies: another `architecture` name, no `tokenizer` metadata, the tensors named in
    `skip` left out, and `config_changes` written into the metadata instead of the config's values.
    """
    import gguf
    from safetensors.numpy import load_file

    config = {**json.loads((model_dir / "config.json").read_text()), **config_changes}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(out, architecture)
    writer.add_name("tiny chat llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta")
                                    or config.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    if tokenizer:
        _add_tokenizer(writer, model_dir, config)
    qtype = weight_type or gguf.GGMLQuantizationType.F32
    for hf_name, tensor in sorted(load_file(model_dir / "model.safetensors").items()):
        name = gguf_name(hf_name)
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        if name in skip:
            continue
        data = tensor.astype(np.float32)
        if name.endswith("attn_q.weight"):
            data = permute(data, heads, heads)
        elif name.endswith("attn_k.weight"):
            data = permute(data, heads, kv_heads)
        if data.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tokenizer(writer: Any, model_dir: Path, config: dict[str, Any]) -> None:
    """llama.cpp's metadata of a byte-level BPE tokenizer: tokens by id, their types, merges,
    special token ids and the chat template."""
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    template_file = model_dir / "chat_template.jinja"
    if template_file.is_file():  # where save_pretrained writes it
        tokenizer_config["chat_template"] = template_file.read_text()
    vocab: dict[str, int] = dict(tokenizer["model"]["vocab"])
    for added in tokenizer["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "token ids have gaps"
    special = {added["content"] for added in tokenizer["added_tokens"] if added["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    if tokenizer_config.get("unk_token") in vocab:
        writer.add_unk_token_id(vocab[tokenizer_config["unk_token"]])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer_config["chat_template"])


@dataclass(frozen=True)
class TensorRecord:
    """Where one tensor's record lies in a GGUF header."""

    name: str
    dims_at: int  # its first dimension (uint64)
    type_at: int  # its ggml type (uint32)
    offset_at: int  # its data offset (uint64)
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GgufLayout:
    tensor_count_at: int
    key_count_at: int
    first_key_length_at: int
    keys: dict[str, int]  # metadata key → where its record starts (the key's length)
    tensors: list[TensorRecord]  # in file order
    data_start: int


def layout(path: Path) -> GgufLayout:
    """Where the fields of a (valid) GGUF file lie, read with the `gguf` package's reader."""
    import gguf

    reader = gguf.GGUFReader(path)
    keys = {name: field.offset for name, field in reader.fields.items()
            if not name.startswith("GGUF.")}
    records = []
    for tensor in reader.tensors:
        start = tensor.field.offset
        name_len = len(tensor.name.encode())
        dims_at = start + 8 + name_len + 4
        type_at = dims_at + 8 * len(tensor.shape)
        records.append(TensorRecord(name=tensor.name, dims_at=dims_at, type_at=type_at,
                                    offset_at=type_at + 4,
                                    offset=int(tensor.data_offset) - reader.data_offset,
                                    nbytes=int(tensor.n_bytes)))
    return GgufLayout(tensor_count_at=8, key_count_at=16, first_key_length_at=24, keys=keys,
                      tensors=records, data_start=reader.data_offset)


def patched(data: bytes, at: int, fmt: str, value: Any) -> bytes:
    """`data` with the struct `fmt` ("<Q", "<I") at byte `at` replaced by `value`."""
    packed = struct.pack(fmt, value)
    return data[:at] + packed + data[at + len(packed):]

