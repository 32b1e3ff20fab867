"""What a model directory may ask of the loader, checked before transformers reads it.

transformers trusts a directory's files: `config.json` can name remote code (`auto_map`), an
attention implementation fetched from the Hub (`attn_implementation`), a quantizer or another
weights file (`transformers_weights`); a sharded save's `weight_map` is joined onto the folder
without normalising it, so `../other/model.safetensors` or an absolute path loads another model's
weights; a tokenizer config's `vocab_file` (or any `*_file` key) is opened wherever it points.
`check_model_dir` refuses all of that, and any link that leads out of the folder, before
every load (`distillation.models.loading`); `check_json_files` is the fuller scan an upload gets.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson

CONFIG = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
# Tokenizers of large vocabularies run to tens of MB; larger JSON is refused, never skipped. Such
# files are scanned as a stream: parsed whole, JSON takes up to 25x its size in Python objects.
MAX_JSON_BYTES = 64 * 1024 * 1024
# The files parsed whole (configs, tokenizer configs, weight indexes) are small: a weight index of
# a 100B-parameter model is about 1 MB.
MAX_PARSED_JSON_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 512
# Keys of config.json (or of a sub-config) that change what the loader runs or reads.
LOADER_KEYS = {
    "auto_map": "names custom classes (remote code)",
    "quantization_config": "asks for a quantizer; upload full-precision safetensors weights",
    "transformers_weights": "points the loader at another weights file",
    "fusion_config": "patches the model's code at load time",
    "kernel_config": "asks for kernels from the Hub",
    "use_kernels": "asks for kernels from the Hub",
}
# Attention implementations the loader runs without fetching code; others (Hub kernels such as
# "kernels-community/…", flash-attention builds) are refused.
SAFE_IMPLEMENTATIONS = {"eager", "sdpa"}
IMPLEMENTATION_KEYS = ("attn_implementation", "_attn_implementation", "experts_implementation",
                       "_experts_implementation")


# The JSON files transformers reads its settings from (tokenizer, processor and generation
# configs): their values reach `from_pretrained` as keyword arguments, so a key naming a file is
# followed wherever it points. Each is small and parsed whole.
SETTINGS_FILES = (CONFIG, TOKENIZER_CONFIG, "special_tokens_map.json", "added_tokens.json",
                  "generation_config.json", "preprocessor_config.json", "processor_config.json",
                  "feature_extractor_config.json", "image_processor_config.json",
                  "video_preprocessor_config.json", "chat_template.json")
# Keys naming a file the loader opens (`vocab_file`, `merges_file`, `tokenizer_file`,
# `fast_tokenizer_files`, ...): each value must be a plain file name in the folder (or absent).
FILE_KEY_SUFFIXES = ("_file", "_files")
# Keys naming a folder or a model (`name_or_path`, `_name_or_path`, `*_dir`, `*_path`): a Hub id
# ("org/name") is fine, a path out of the folder (absolute, `..`, `~`, a URL) is not.
PATH_KEY_SUFFIXES = ("name_or_path", "_dir", "_directory", "_path")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


class UnsafeModel(ValueError):
    """A model directory the service refuses to load (the message names the file and the key)."""


def _check_size(path: Path, what: str, limit: int, kind: str) -> None:
    size = path.stat().st_size
    if size > limit:
        raise UnsafeModel(f"{what} is {size} bytes; {kind} over {limit} bytes are not accepted")


def read_json(path: Path, what: str | None = None) -> Any:
    """A small JSON file parsed whole (configs, weight indexes); UnsafeModel when it is too large
    or not JSON (never a 500)."""
    what = what or path.name
    _check_size(path, what, MAX_PARSED_JSON_BYTES, "configuration and index JSON files")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError and integers past Python's digit limit alike.
        raise UnsafeModel(f"{what} is not valid JSON ({str(exc)[:200]})") from exc


def check_config(config: Any, what: str = CONFIG) -> None:
    """Refuse loader-affecting keys in a config and in every sub-config nested in it."""
    if not isinstance(config, dict):
        raise UnsafeModel(f"{what} is not a JSON object")
    stack: list[tuple[str, dict[str, Any]]] = [("", config)]
    while stack:
        where, node = stack.pop()
        for key, value in node.items():
            place = f"{what}{where}: '{key}'"
            if key in LOADER_KEYS and value is not None:
                raise UnsafeModel(f"{place} {LOADER_KEYS[key]}; remove it from the upload")
            if key in IMPLEMENTATION_KEYS and value is not None and value not in SAFE_IMPLEMENTATIONS:
                raise UnsafeModel(
                    f"{place} is {str(value)[:100]!r}: the service chooses how attention runs "
                    f"(allowed: {', '.join(sorted(SAFE_IMPLEMENTATIONS))}); remove the key"
                )
            if isinstance(value, dict):
                stack.append((f"{where}.{key}", value))


def _inside(root: Path, path: Path, what: str) -> Path:
    resolved = Path(os.path.realpath(path))
    if not resolved.is_relative_to(root):
        raise UnsafeModel(f"{what} leads outside the model folder")
    return resolved


def plain_file_name(model_dir: Path, name: Any, what: str) -> Path:
    """A file named by a model file: a plain name of a regular file in the model folder."""
    if not isinstance(name, str) or not name:
        raise UnsafeModel(f"{what} is not a file name")
    if (name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name)
            or (len(name) > 1 and name[1] == ":")):
        raise UnsafeModel(f"{what} is {name[:200]!r}: only plain file names in the model folder "
                          "are accepted (no folders, '..' or absolute paths)")
    root = Path(os.path.realpath(model_dir))
    path = _inside(root, model_dir / name, f"{what} ({name!r})")
    if not path.is_file() or (model_dir / name).is_symlink():
        raise UnsafeModel(f"{what} names {name!r}, which is not a file of the model")
    return path


def check_weight_map(model_dir: Path, index_name: str) -> list[Path]:
    """The shard files a `*.safetensors.index.json` names, each inside the model folder."""
    index = read_json(model_dir / index_name)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not isinstance(index.get("metadata"), dict):
        raise UnsafeModel(f"{index_name} needs a 'weight_map' and a 'metadata' object")
    shards: dict[str, Path] = {}
    for tensor, name in weight_map.items():
        if name not in shards:
            what = f"{index_name}: weight_map[{str(tensor)[:100]!r}]"
            shards[name] = plain_file_name(model_dir, name, what)
            if not name.endswith(".safetensors"):
                raise UnsafeModel(f"{what} names {name!r}, which is not a .safetensors file")
    return sorted(set(shards.values()))


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files transformers loads from the folder: `model.safetensors`, else the
    shards its index names (UnsafeModel when neither is there)."""
    if (model_dir / SAFE_WEIGHTS).is_file() and not (model_dir / SAFE_WEIGHTS).is_symlink():
        return [model_dir / SAFE_WEIGHTS]
    if (model_dir / SAFE_INDEX).is_file():
        return check_weight_map(model_dir, SAFE_INDEX)
    raise UnsafeModel(f"the model has no {SAFE_WEIGHTS} (nor a sharded {SAFE_INDEX}): save it "
                      "with save_pretrained(safe_serialization=True)")


def _check_links(model_dir: Path) -> None:
    root = Path(os.path.realpath(model_dir))
    for folder, dirs, files in os.walk(model_dir, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                _inside(root, path, f"{path.relative_to(model_dir)} (a link)")


def check_model_dir(model_dir: Path, *, need_config: bool = True) -> None:
    """Refuse a model folder whose files would make the loader run code or read outside it.

    Cheap enough for every load: links, `config.json`, `tokenizer_config.json` and the weight
    indexes; `check_json_files` (at upload) reads every JSON file. `need_config=False`: a folder
    of tokenizer files alone is fine.
    """
    if not model_dir.is_dir():
        raise UnsafeModel(f"{model_dir} is not a folder")
    _check_links(model_dir)
    config = model_dir / CONFIG
    if config.is_file():
        check_config(read_json(config))
    elif need_config:
        raise UnsafeModel(f"the model has no {CONFIG}")
    for name in SETTINGS_FILES:
        if (model_dir / name).is_file():
            data = read_json(model_dir / name)
            if name == TOKENIZER_CONFIG and isinstance(data, dict):
                _check_auto_map(data, TOKENIZER_CONFIG)
            check_named_files(model_dir, data, name)
    for index in sorted(model_dir.glob("*.index.json")):
        if index.name.endswith(".safetensors.index.json"):
            check_weight_map(model_dir, index.name)


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (nested lists and objects too), with where it sits."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _strings(item, f"{where}[{n}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")


def _outside(value: str) -> bool:
    """A path that leads out of the folder wherever it is joined: absolute, `..`, `~`, a URL or a
    drive, or a Windows separator."""
    return (os.path.isabs(value) or value.startswith("~") or "\\" in value or ":" in value
            or ".." in value.split("/"))


def _check_file_name(model_dir: Path, value: str, place: str) -> None:
    if not value:
        return
    if value in (".", "..") or "/" in value or _outside(value):
        raise UnsafeModel(f"{place} is {value[:200]!r}: a file a model names must be a plain file "
                          "name in the model folder (no folders, '..', '~', URLs or absolute paths)")
    path = model_dir / value
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UnsafeModel(f"{place} names {value[:200]!r}, which is not a file of the model")


def _check_model_name(value: str, place: str) -> None:
    if not value:
        return
    # A relative path that happens to exist where the process runs is refused too: the loader
    # would read it as a folder, not as a Hub id.
    if _outside(value) or not _HUB_ID.fullmatch(value) or os.path.lexists(value):
        raise UnsafeModel(f"{place} is {value[:200]!r}: only a Hub model id ('org/name') is "
                          "accepted here, never a path (absolute, '..', '~' or a URL)")


def check_named_files(model_dir: Path, data: Any, what: str) -> None:
    """Refuse a settings file whose keys name files or folders outside the model folder.

    transformers prefers a `vocab_file` (or `merges_file`, `tokenizer_file`, ...) named in
    `tokenizer_config.json` to the folder's own files and opens it wherever it points, so
    `"vocab_file": "/etc/passwd"` would be read as a vocabulary and saved into a model the
    tenant downloads. Keys are matched at any depth; every string under a matching key is checked.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, node = stack.pop()
        items = (node.items() if isinstance(node, dict)
                 else ((f"[{n}]", item) for n, item in enumerate(node)) if isinstance(node, list)
                 else ())
        for key, value in items:
            key = str(key)
            place = f"{where}.{key}" if isinstance(node, dict) else f"{where}{key}"
            name = key.lower()
            if isinstance(node, dict) and name.endswith(FILE_KEY_SUFFIXES):
                for at, text in _strings(value, place):
                    _check_file_name(model_dir, text, f"{what}: '{at.lstrip('.')}'")
            elif isinstance(node, dict) and name.endswith(PATH_KEY_SUFFIXES):
                for at, text in _strings(value, place):
                    _check_model_name(text, f"{what}: '{at.lstrip('.')}'")
            elif isinstance(value, dict | list):
                stack.append((place, value))


def _check_auto_map(data: dict[str, Any], what: str) -> None:
    if data.get("auto_map") is not None:
        raise UnsafeModel(f"{what} has an 'auto_map' entry (remote code); upload a model that "
                          "transformers loads without trust_remote_code")


def top_level_keys(path: Path, what: str) -> set[str]:
    """The top-level keys of a JSON file, read as a stream (bounded memory whatever it holds);
    UnsafeModel when it is over MAX_JSON_BYTES, nested too deep or not JSON."""
    _check_size(path, what, MAX_JSON_BYTES, "JSON files")
    try:
        return _scan(path, what, ijson.basic_parse)
    except ijson.JSONError as exc:
        # The C parser stops at integers past 64 bits, which tokenizer configs hold
        # (`model_max_length` of 1e30); the pure-Python one reads them, slower, so small files only.
        if "integer overflow" not in str(exc) or path.stat().st_size > MAX_PARSED_JSON_BYTES:
            raise UnsafeModel(f"{what} is not valid JSON ({str(exc).splitlines()[0][:200]})") from exc
    try:
        return _scan(path, what, ijson.get_backend("python").basic_parse)
    except (ijson.JSONError, ValueError) as exc:  # ValueError: integers past 4,300 digits
        raise UnsafeModel(f"{what} is not valid JSON ({str(exc).splitlines()[0][:200]})") from exc


def _scan(path: Path, what: str, parse: Any) -> set[str]:
    keys: set[str] = set()
    depth = 0
    with path.open("rb") as handle:
        try:
            for event, value in parse(handle, use_float=True):
                if event in ("start_map", "start_array"):
                    depth += 1
                    if depth > MAX_JSON_DEPTH:
                        raise UnsafeModel(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
                elif event in ("end_map", "end_array"):
                    depth -= 1
                elif event == "map_key" and depth == 1:
                    keys.add(str(value))
        except UnicodeDecodeError as exc:
            raise UnsafeModel(f"{what} is not UTF-8 JSON") from exc
    return keys


def check_json_files(model_dir: Path) -> None:
    """Every JSON file of an upload: at most MAX_JSON_BYTES, valid, and without `auto_map`."""
    for path in sorted(model_dir.rglob("*.json")):
        what = path.relative_to(model_dir).as_posix()
        if "auto_map" in top_level_keys(path, what):
            raise UnsafeModel(f"{what} has an 'auto_map' entry (remote code); upload a model "
                              "that transformers loads without trust_remote_code")


# Where a tokenizer keeps its chat template: a file of its own (transformers 4.43+ saves
# `chat_template.jinja`; named extras under `additional_chat_templates/`), `chat_template.json`
# (processors), or a `chat_template` key of `tokenizer_config.json` (older saves).
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
CHAT_TEMPLATE_DIR = "additional_chat_templates"


def has_chat_template(model_dir: Path) -> bool:
    """Whether the directory's tokenizer has a chat template, read from its files (no tokenizer
    loaded); UnsafeModel when its tokenizer config is too large or not JSON."""
    if any((model_dir / name).is_file() and (model_dir / name).stat().st_size
           for name in CHAT_TEMPLATE_FILES):
        return True
    extras = model_dir / CHAT_TEMPLATE_DIR
    if extras.is_dir() and any(extras.glob("*.jinja")):
        return True
    config = model_dir / TOKENIZER_CONFIG
    return config.is_file() and "chat_template" in top_level_keys(config, TOKENIZER_CONFIG)
