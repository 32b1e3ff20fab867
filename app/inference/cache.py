"""A small thread-safe LRU of loaded predictors, so that a model is not reloaded per request."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.kit.storage import dir_mtime_ns
from distillation.predict import Predictor

DEFAULT_SIZE = 4


@dataclass
class LoadedModel:
    """A predictor and the lock its calls take: fast tokenizers are not safe to share across
    threads ("Already borrowed"), and one model at a time keeps CPU threads from thrashing."""

    predictor: Predictor
    lock: threading.Lock = field(default_factory=threading.Lock)


class PredictorCache:
    def __init__(
        self,
        *,
        max_size: int = DEFAULT_SIZE,
        loader: Callable[[Path], Predictor] = Predictor.load,
    ) -> None:
        self.max_size = max_size
        self._loader = loader
        self._entries: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        # Loads are serialised: two requests for a cold model load it once, not twice.
        self._load_lock = threading.Lock()

    def get(self, model_id: str, model_dir: Path) -> LoadedModel:
        """The loaded model for `model_id`; a changed directory (new mtime) is loaded afresh."""
        key = (model_id, dir_mtime_ns(model_dir))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        with self._load_lock:
            with self._lock:
                if key in self._entries:
                    return self._entries[key]
            loaded = LoadedModel(predictor=self._loader(model_dir))
            with self._lock:
                for stale in [k for k in self._entries if k[0] == model_id]:
                    del self._entries[stale]
                self._entries[key] = loaded
                while len(self._entries) > self.max_size:
                    self._entries.popitem(last=False)
        return loaded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


predictors = PredictorCache()
