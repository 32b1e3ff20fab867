"""Every model, tokenizer and config the service reads from a folder is loaded here: the folder
is checked first (`distillation.models.files`, and for weights `distillation.models.weights`), remote
code is off and nothing is fetched from the Hub, whatever the environment says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from distillation.models.files import check_model_dir
from distillation.models.weights import check_weights_fit_config

# Passed to every from_pretrained: local files only (no Hub download, even with the hub online)
# and never code shipped with the model.
LOCAL_ONLY: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}


def load_config(path: str | Path) -> PretrainedConfig:
    """The folder's `config.json` (UnsafeModel, a ValueError, when the folder is refused)."""
    check_model_dir(Path(path))
    return AutoConfig.from_pretrained(str(path), **LOCAL_ONLY)  # type: ignore[no-any-return]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The folder's tokenizer (a folder of tokenizer files alone is fine)."""
    check_model_dir(Path(path), need_config=False)
    return AutoTokenizer.from_pretrained(str(path), **LOCAL_ONLY)  # type: ignore[no-any-return]


def load_model(model_class: Any, path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """`model_class.from_pretrained(path, **kwargs)` once the folder's files and the match of
    its config with its weights' headers have been checked (nothing is allocated before)."""
    check_model_dir(Path(path))
    check_weights_fit_config(Path(path), model_class)
    return model_class.from_pretrained(str(path), **LOCAL_ONLY, **kwargs)  # type: ignore[no-any-return]
