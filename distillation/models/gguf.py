"""GGUF files (llama.cpp's format, the one most local language models come in), checked from
their header before anything is allocated; `distillation.models.gguf_convert` then turns a checked
file into a safetensors Hugging Face folder. Torch-free.

A GGUF file is the magic `GGUF`, a version, the tensor and metadata counts, the metadata (typed
key/values), one record per tensor (name, dimensions, ggml type, offset), padding to
`general.alignment`, then the tensors' data. Every count and length in it is the file's word: the
`gguf` package's reader memory-maps the file and believes them, and transformers reads the file
with it. So the header is read here first, each count and length bounded before what it
announces is read (and the whole header bounded), and every tensor is checked against the file:
a known type transformers can dequantise, its shape a whole number of that type's blocks, its
offset aligned, its bytes inside the file and overlapping no other tensor's.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize
from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
from transformers.integrations.gguf.gguf_config_mapping import GGUF_CONFIG_ARCHS
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_TYPES

from distillation.models.files import UnsafeModel

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 counted in 32 bits and is gone from use
DEFAULT_ALIGNMENT = 32
# Real files: a few hundred tensors (a large mixture of experts: a few thousand), a few dozen
# metadata keys, names of at most 63 bytes (ggml's limit), tokenizers of up to ~260k tokens and
# merges (a few MB), chat templates of tens of KB.
MAX_TENSORS = 65_536
MAX_METADATA_KEYS = 65_536
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_KEY_BYTES = 65_535
MAX_STRING_BYTES = 1024 * 1024
MAX_ARRAY_STRINGS = 1 << 20  # each is parsed one by one, here and by transformers
MAX_TENSOR_NAME_BYTES = 64
MAX_DIMS = 4
MAX_ALIGNMENT = 1 << 20
_FIXED = {GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
          GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
          GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
          GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d"}

# Architectures transformers dequantises (`GGUF_CONFIG_MAPPING`, by its model types; four are
# spelled otherwise in the files), less the mapping's sections that are no architecture, those
# with no causal-LM class (encoder-decoders; `deci` needs remote code) and those its packed-weights
# loader takes (`GGUF_CONFIG_ARCHS`), which fetches kernels from the Hub.
_FILE_SPELLINGS = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                   "minimax-m2": "minimax_m2"}
_NOT_CAUSAL = {"general", "tokenizer", "t5", "umt5", "deci"}
SUPPORTED_ARCHITECTURES = frozenset(GGUF_CONFIG_MAPPING) - _NOT_CAUSAL - set(GGUF_CONFIG_ARCHS)
TOKENIZER_MODELS = frozenset(GGUF_TOKENIZER_TYPES)
SPECIAL_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")


class InvalidGguf(UnsafeModel):
    """A GGUF file the service refuses (the message names the field or the tensor at fault)."""


@dataclass(frozen=True)
class GgufArray:
    """An array value of the metadata: its element type and length (elements are not kept)."""

    type: GGUFValueType
    count: int


@dataclass(frozen=True)
class GgufTensor:
    name: str
    dims: tuple[int, ...]  # GGUF order: the innermost (contiguous) dimension first
    type: GGMLQuantizationType
    offset: int  # from the start of the data section
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The dimensions in numpy / torch order."""
        return tuple(reversed(self.dims))

    def describe(self) -> str:
        return (f"tensor {self.name!r} ({self.type.name} {list(self.shape)}: {self.nbytes} bytes "
                f"at offset {self.offset})")


@dataclass(frozen=True)
class GgufSummary:
    """What a checked GGUF file holds."""

    version: int
    architecture: str  # transformers' model type
    metadata: dict[str, Any]  # scalars as values, arrays as GgufArray
    tensors: tuple[GgufTensor, ...]
    data_start: int
    file_size: int
    parameters: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", sum(math.prod(t.dims) for t in self.tensors))

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return value if isinstance(value, str) else None


def supported_tensor_types() -> frozenset[GGMLQuantizationType]:
    """The ggml types the `gguf` package can dequantise (probed on one block of zeros)."""
    return _dequantisable()


@lru_cache(maxsize=1)
def _dequantisable() -> frozenset[GGMLQuantizationType]:
    found = set()
    for qtype, (_, type_size) in GGML_QUANT_SIZES.items():
        try:
            dequantize(np.zeros(type_size, dtype=np.uint8), qtype)
        except (NotImplementedError, ValueError, TypeError):
            continue
        found.add(qtype)
    return frozenset(found)


class _Header:
    """Bounded reads of a GGUF header: nothing past the file's end or the header limit is read."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.size, self.pos = handle, size, 0

    def _reserve(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise InvalidGguf(f"the file ends inside {what} (at byte {self.size}): it is truncated")
        if self.pos + n > MAX_HEADER_BYTES:
            raise InvalidGguf(f"its header (metadata and tensor list) runs past {MAX_HEADER_BYTES}"
                              f" bytes at {what}; larger headers are not accepted")

    def take(self, n: int, what: str) -> bytes:
        self._reserve(n, what)
        data = self.handle.read(n)
        if len(data) != n:
            raise InvalidGguf(f"the file ends inside {what}: it is truncated")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        """Pass over `n` bytes (checked as `take` does) without holding them."""
        self._reserve(n, what)
        self.handle.seek(n, os.SEEK_CUR)
        self.pos += n

    def number(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, limit: int) -> int:
        value: int = self.number("<Q", what)
        if value > limit:
            raise InvalidGguf(f"{what} is {value}; at most {limit} are accepted")
        return value

    def string(self, what: str, limit: int, *, keep: bool = True) -> str:
        length = self.count(f"the length of {what}", limit)
        raw = self.take(length, what)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidGguf(f"{what} is not UTF-8 text") from exc
        return text if keep else ""

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.number("<I", f"the type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise InvalidGguf(f"{what} has an unknown value type {raw}") from None

    def value(self, vtype: GGUFValueType, what: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what, MAX_STRING_BYTES)
        if vtype != GGUFValueType.ARRAY:
            return self.number(_FIXED[vtype], what)
        etype = self.value_type(f"the elements of {what}")
        if etype == GGUFValueType.ARRAY:
            raise InvalidGguf(f"{what} is an array of arrays, which transformers cannot read")
        width = 8 if etype == GGUFValueType.STRING else struct.calcsize(_FIXED[etype])
        limit = (MAX_HEADER_BYTES - self.pos) // width
        if etype == GGUFValueType.STRING:
            limit = min(limit, MAX_ARRAY_STRINGS)
        length = self.count(f"the length of {what}", limit)
        if etype == GGUFValueType.STRING:
            for index in range(length):
                self.string(f"{what}[{index}]", MAX_STRING_BYTES, keep=False)
        else:
            self.skip(length * width, what)
        return GgufArray(etype, length)


def check_gguf(path: Path, *, max_parameters: int | None = None) -> GgufSummary:
    """Read and check a GGUF file's header and tensor list (InvalidGguf naming the problem).

    Only the header is read (at most MAX_HEADER_BYTES), and only bounded amounts at a time;
    `max_parameters` bounds the values its tensors hold (what conversion dequantises).
    """
    with path.open("rb") as handle:
        return check_gguf_stream(handle, path.stat().st_size, max_parameters=max_parameters)


def check_gguf_stream(handle: BinaryIO, size: int, *, max_parameters: int | None = None
                      ) -> GgufSummary:
    """`check_gguf` of an open, seekable file of `size` bytes, read from its start."""
    handle.seek(0)
    header = _Header(handle, size)
    version = _preamble(header)
    tensor_count = header.count("its tensor count", MAX_TENSORS)
    key_count = header.count("its metadata key count", MAX_METADATA_KEYS)
    metadata = _metadata(header, key_count)
    tensors = [_tensor_info(header, index) for index in range(tensor_count)]
    alignment = _alignment(metadata)
    data_start = header.pos + (-header.pos % alignment)
    if data_start > size:
        raise InvalidGguf(f"the file ends before its tensor data begins (at byte {data_start}): "
                          "it is truncated")
    _check_tensors(tensors, alignment=alignment, data_start=data_start, file_size=size)
    summary = GgufSummary(version=version, architecture=_architecture(metadata),
                          metadata=metadata, tensors=tuple(tensors), data_start=data_start,
                          file_size=size)
    _check_tokenizer(metadata)
    if not tensors:
        raise InvalidGguf("it holds no tensors")
    if max_parameters is not None and summary.parameters > max_parameters:
        raise InvalidGguf(f"its tensors hold {summary.parameters:,} values; at most "
                          f"{max_parameters:,} are accepted (each is stored as a 4-byte float)")
    return summary


def _preamble(header: _Header) -> int:
    magic = header.take(4, "its magic number") if header.size >= 4 else b""
    if magic != MAGIC:
        raise InvalidGguf(f"not a GGUF file: it starts with {magic!r}, not {MAGIC!r}")
    version: int = header.number("<I", "its version")
    if version not in VERSIONS:
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        hint = " (a big-endian file; only little-endian ones are read)" if swapped in VERSIONS else ""
        raise InvalidGguf(f"GGUF version {version} is not supported{hint}; versions "
                          f"{', '.join(map(str, VERSIONS))} are")
    return version


def _metadata(header: _Header, count: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for index in range(count):
        key = header.string(f"metadata key {index}", MAX_KEY_BYTES)
        what = f"metadata {key[:100]!r}"
        if key in metadata:
            raise InvalidGguf(f"{what} appears twice")
        metadata[key] = header.value(header.value_type(what), what)
    return metadata


def _tensor_info(header: _Header, index: int) -> GgufTensor:
    name = header.string(f"the name of tensor {index}", MAX_TENSOR_NAME_BYTES)
    what = f"tensor {name!r}"
    n_dims: int = header.number("<I", f"the dimension count of {what}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise InvalidGguf(f"{what} has {n_dims} dimensions; GGUF tensors have 1 to {MAX_DIMS}")
    dims = tuple(header.number("<Q", f"the dimensions of {what}") for _ in range(n_dims))
    raw_type: int = header.number("<I", f"the type of {what}")
    offset: int = header.number("<Q", f"the offset of {what}")
    if 0 in dims:
        raise InvalidGguf(f"{what} has an empty dimension ({list(reversed(dims))})")
    try:
        qtype = GGMLQuantizationType(raw_type)
    except ValueError:
        raise InvalidGguf(f"{what} has an unknown ggml type {raw_type}") from None
    if qtype not in supported_tensor_types() or qtype not in GGML_QUANT_SIZES:
        raise InvalidGguf(f"{what} is stored as {qtype.name}, which cannot be dequantised here")
    block, type_size = GGML_QUANT_SIZES[qtype]
    if dims[0] % block:
        raise InvalidGguf(f"{what}: its shape {list(reversed(dims))} is no whole number of "
                          f"{qtype.name} blocks (of {block} values along its last dimension)")
    return GgufTensor(name=name, dims=dims, type=qtype, offset=offset,
                      nbytes=math.prod(dims) // block * type_size)


def _alignment(metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (type(alignment) is not int or alignment < 8 or alignment > MAX_ALIGNMENT
            or alignment & (alignment - 1)):
        raise InvalidGguf(f"metadata 'general.alignment' is {alignment!r}; a power of two from 8 "
                          f"to {MAX_ALIGNMENT} is expected")
    return alignment


def _check_tensors(tensors: list[GgufTensor], *, alignment: int, data_start: int,
                   file_size: int) -> None:
    """Names unique; each tensor's bytes aligned, inside the file, overlapping no other's."""
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise InvalidGguf(f"tensor {tensor.name!r} appears twice")
        seen.add(tensor.name)
        if tensor.offset % alignment:
            raise InvalidGguf(f"{tensor.describe()}: the offset is not a multiple of the file's "
                              f"alignment ({alignment})")
        end = data_start + tensor.offset + tensor.nbytes
        if end > file_size:
            raise InvalidGguf(f"{tensor.describe()} ends at byte {end}, past the end of the file "
                              f"({file_size} bytes): the file is truncated, or the tensor's shape "
                              "or offset is wrong")
    ordered = sorted(tensors, key=lambda t: t.offset)
    for before, after in itertools.pairwise(ordered):
        if before.offset + before.nbytes > after.offset:
            raise InvalidGguf(f"{before.describe()} overlaps {after.describe()}: a shape or an "
                              "offset is wrong")


def _architecture(metadata: dict[str, Any]) -> str:
    raw = metadata.get("general.architecture")
    if not isinstance(raw, str) or not raw:
        raise InvalidGguf("metadata 'general.architecture' is missing or not a string")
    architecture = _FILE_SPELLINGS.get(raw, raw)
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise InvalidGguf(
            f"architecture {raw[:100]!r} is not one transformers can dequantise into a causal "
            f"language model; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}")
    return architecture


def _check_tokenizer(metadata: dict[str, Any]) -> None:
    """The metadata transformers rebuilds the tokenizer from: a known model, its tokens, merges
    or scores, and special token ids inside the vocabulary."""
    model = metadata.get("tokenizer.ggml.model")
    if not isinstance(model, str):
        raise InvalidGguf("metadata 'tokenizer.ggml.model' is missing: the file carries no "
                          "tokenizer")
    if model not in TOKENIZER_MODELS:
        raise InvalidGguf(f"metadata 'tokenizer.ggml.model' is {model[:100]!r}; transformers "
                          f"reads {', '.join(sorted(TOKENIZER_MODELS))}")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, GgufArray) or tokens.type != GGUFValueType.STRING or not tokens.count:
        raise InvalidGguf("metadata 'tokenizer.ggml.tokens' is missing or not a list of strings")
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is not None and (not isinstance(merges, GgufArray)
                               or merges.type != GGUFValueType.STRING):
        raise InvalidGguf("metadata 'tokenizer.ggml.merges' is not a list of strings")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        value = metadata.get(key)
        if value is not None and (not isinstance(value, GgufArray) or value.count != tokens.count):
            raise InvalidGguf(f"metadata {key!r} is not a list of one value per token "
                              f"({tokens.count} tokens)")
    if merges is None and "tokenizer.ggml.scores" not in metadata:
        raise InvalidGguf("the tokenizer has neither 'tokenizer.ggml.merges' nor "
                          "'tokenizer.ggml.scores' to rebuild its merges from")
    for name in SPECIAL_TOKEN_KEYS:
        value = metadata.get(f"tokenizer.ggml.{name}")
        if value is not None and (type(value) is not int or not 0 <= value < tokens.count):
            raise InvalidGguf(f"metadata 'tokenizer.ggml.{name}' is {value!r}, not a token id "
                              f"(the vocabulary has {tokens.count} tokens)")
    template = metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise InvalidGguf("metadata 'tokenizer.chat_template' is not a string")
