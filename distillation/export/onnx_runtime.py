"""An exported classifier in ONNX Runtime on the CPU: the `onnx` and `onnx-int8` runtimes.

`OnnxPredictor` answers `classify` exactly as `distillation.export.predict.Predictor` does (it shares
`classify_with`: the same tokenising, truncation, batching and label order), only the logits come
from an ONNX Runtime session. `OnnxClassifier` wraps a session as a module whose forward returns
`.logits`, so the engine measures a runtime's accuracy and speed with the same code that measures
the torch student.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from distillation.export.runtimes import ONNX_FILE
from distillation.models.info import CLASSIFICATION, max_input_length, task_of
from distillation.models.loading import load_config, load_tokenizer
from distillation.tasks.classification import ClassifyInput, classify_with
from distillation.training.loop import model_inputs


def process_cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Threads set on purpose: `threads` (default: the process's CPUs) inside an operator, one
    between operators (a classifier's graph is a chain; parallel branches would only contend)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads or process_cpu_count())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads sleep instead of spinning: a server shares its CPUs with the event
    # loop that parses requests and sends answers, which spinning threads would starve.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(model_dir: Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on `model_dir/model.onnx`."""
    return ort.InferenceSession(str(model_dir / ONNX_FILE), sess_options=session_options(threads),
                                providers=["CPUExecutionProvider"])


class OnnxClassifier(nn.Module):
    """A session on an exported classifier, called like the torch model it came from:
    `module(input_ids=…, attention_mask=…, token_type_ids=…).logits`."""

    def __init__(self, session: ort.InferenceSession) -> None:
        super().__init__()
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> SequenceClassifierOutput:
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        # What the torch model assumes of an input left out: every token attended, segment 0.
        default = {"attention_mask": torch.ones_like(input_ids),
                   "token_type_ids": torch.zeros_like(input_ids)}
        feeds: dict[str, np.ndarray] = {}
        for name in self.input_names:
            value = given.get(name)
            value = value if value is not None else default[name]
            feeds[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        logits = self.session.run(None, feeds)[0]
        return SequenceClassifierOutput(logits=torch.from_numpy(logits))


class OnnxPredictor:
    """A runtime directory (`onnx/` or `onnx-int8/` of a model) ready for `classify`."""

    def __init__(self, *, session: ort.InferenceSession, tokenizer: PreTrainedTokenizerBase,
                 config: PretrainedConfig) -> None:
        self.model = OnnxClassifier(session)
        self.tokenizer = tokenizer
        self.task = CLASSIFICATION
        id2label: dict[Any, Any] = dict(config.id2label or {})
        self.labels = [str(id2label[i]) for i in sorted(id2label, key=int)]
        self.max_length = max_input_length(config, tokenizer)

    @classmethod
    def load(cls, model_dir: Path, *, threads: int | None = None) -> OnnxPredictor:
        """Load `model.onnx`, `config.json` and the tokenizer of a runtime directory; `threads`
        is ONNX Runtime's intra-op thread count (default: the process's CPUs)."""
        config = load_config(model_dir)  # checks the folder, as every load does
        if task_of(config) != CLASSIFICATION:
            raise ValueError(f"{model_dir} is not a sequence classifier: only classifiers run "
                             "in ONNX Runtime here")
        tokenizer = load_tokenizer(model_dir)
        return cls(session=open_session(model_dir, threads), tokenizer=tokenizer, config=config)

    def classify(self, inputs: Sequence[ClassifyInput]) -> list[dict[str, Any]]:
        """[{"label", "score", "scores": {label: probability}}] for each text or text pair."""
        return classify_with(lambda encoded: self.model(**model_inputs(self.model, encoded)).logits,
                             self.tokenizer, self.labels, inputs, max_length=self.max_length)

    def generate(self, inputs: Sequence[str], max_new_tokens: int) -> list[dict[str, Any]]:
        """Language models run in torch only."""
        raise ValueError("generate needs a causal-lm or seq2seq model in the torch runtime; "
                         "this is a sequence-classification model in ONNX Runtime")

    def chat(self, conversations: Any, max_new_tokens: int, *,
             stream: Any = None) -> list[dict[str, Any]]:
        """Chat models run in torch only."""
        raise ValueError("messages need a causal-lm chat model in the torch runtime; this is a "
                         "sequence-classification model in ONNX Runtime")
