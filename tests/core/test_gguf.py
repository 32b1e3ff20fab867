"""GGUF files: the tiny Llama chat model, written as llama.cpp's converter writes it, converts back
to the same model (logits, tokens, chat template); a file whose metadata asks for more than its
tensors hold, or lacks a tensor, is refused before the model is built; the architectures accepted
are those transformers dequantises into a causal language model; checking reads no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distillation.models.gguf import SUPPORTED_ARCHITECTURES, InvalidGguf, check_gguf
from distillation.models.gguf_convert import convert_gguf
from tests.factories import gguf as gguf_factory
from tests.factories.gguf import write_llama_gguf
from tests.factories.lm import save_chat_llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_chat_llama(tmp_path_factory.mktemp("gguf") / "hf", seed=3)


@pytest.fixture(scope="module")
def gguf_file(llama: Path) -> Path:
    return write_llama_gguf(llama, llama.parent / "tiny.gguf")


def _load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _chat_ids(tokenizer: Any) -> Any:
    messages = [{"role": "user", "content": "copy red cat one"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                         return_dict=True, return_tensors="pt")


def _logits(model: Any, inputs: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(**inputs).logits


def test_the_tiny_llama_converts_back_to_the_same_model(llama: Path, gguf_file: Path,
                                                        tmp_path: Path) -> None:
    import torch

    summary = convert_gguf(gguf_file, tmp_path / "converted")

    original, original_tokenizer = _load(llama)
    converted, tokenizer = _load(tmp_path / "converted")
    assert summary.architecture == "llama"
    assert summary.parameters == sum(p.numel() for p in original.parameters())
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"]
    assert "quantization_config" not in config and "_model_name_or_path" not in config
    # The same tokens under the chat template, the same end of turn, the same logits.
    inputs = _chat_ids(original_tokenizer)
    assert torch.equal(_chat_ids(tokenizer)["input_ids"], inputs["input_ids"])
    assert tokenizer.chat_template == original_tokenizer.chat_template
    assert tokenizer.eos_token == original_tokenizer.eos_token == "<|im_end|>"
    assert torch.equal(_logits(converted, inputs), _logits(original, inputs))
    greedy = {"max_new_tokens": 8, "do_sample": False}
    assert torch.equal(converted.generate(**inputs, **greedy), original.generate(**inputs, **greedy))
    assert not list(tmp_path.glob(".tmp-*"))


def test_q_and_k_written_unpermuted_give_another_model(llama: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader undoes llama.cpp's reordering of the q/k rows: it is what the exact round trip
    rests on (a file written without it loads as a different model)."""
    import torch

    monkeypatch.setattr(gguf_factory, "permute", lambda weights, *heads: weights)
    convert_gguf(write_llama_gguf(llama, tmp_path / "plain.gguf"), tmp_path / "converted")

    original, tokenizer = _load(llama)
    inputs = _chat_ids(tokenizer)
    assert not torch.allclose(_logits(_load(tmp_path / "converted")[0], inputs),
                              _logits(original, inputs), atol=1e-3)


def test_quantised_weights_dequantise_to_nearly_the_same_model(llama: Path, gguf_file: Path,
                                                               tmp_path: Path) -> None:
    import gguf
    import torch

    path = write_llama_gguf(llama, tmp_path / "q8.gguf", weight_type=gguf.GGMLQuantizationType.Q8_0)
    summary = convert_gguf(path, tmp_path / "converted")

    original, tokenizer = _load(llama)
    inputs = _chat_ids(tokenizer)
    assert {t.type.name for t in summary.tensors} == {"Q8_0", "F32"}
    assert path.stat().st_size < gguf_file.stat().st_size / 2
    assert torch.allclose(_logits(_load(tmp_path / "converted")[0], inputs),
                          _logits(original, inputs), atol=0.05)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"skip": ["blk.1.ffn_down.weight"]}, "lacks the weights of model.layers.1.mlp.down_proj"),
        ({"num_hidden_layers": 100_000}, "'num_hidden_layers' is 100000, but the weights hold only 20"),
        ({"hidden_size": 4096}, "describes a model of"),
    ],
    ids=["a missing tensor", "more layers than tensors", "wider than its tensors"],
)
def test_metadata_that_asks_for_more_than_the_tensors_hold_is_refused(
    llama: Path, tmp_path: Path, changes: dict[str, Any], needle: str
) -> None:
    path = write_llama_gguf(llama, tmp_path / "bad.gguf", **changes)

    with pytest.raises(InvalidGguf, match=needle):
        convert_gguf(path, tmp_path / "converted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_supported_architectures_are_the_causal_ones_transformers_dequantises() -> None:
    from transformers.integrations.gguf.gguf_config_mapping import GGUF_CONFIG_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    expected = {arch for arch in GGUF_SUPPORTED_ARCHITECTURES
                if arch in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and arch not in GGUF_CONFIG_ARCHS}
    assert expected == SUPPORTED_ARCHITECTURES
    assert {"llama", "qwen2", "mistral", "phi3", "gemma2"} <= SUPPORTED_ARCHITECTURES


def test_the_shipped_smollm2_file_passes_its_checks() -> None:
    from app.models.builtin import SMOLLM2_FILE, SMOLLM2_PACKAGE, package_file

    summary = check_gguf(package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE))

    assert (summary.architecture, summary.parameters, len(summary.tensors)) == (
        "llama", 134_515_008, 272)
    assert summary.metadata["llama.block_count"] == 30
    assert summary.metadata["tokenizer.ggml.model"] == "gpt2"
    assert summary.metadata["tokenizer.ggml.tokens"].count == 49_152
    assert "<|im_start|>" in summary.metadata["tokenizer.chat_template"]


def test_checking_a_file_needs_no_torch(gguf_file: Path) -> None:
    script = ("import sys; from pathlib import Path; "
              "from distillation.models.gguf import check_gguf; "
              f"print(check_gguf(Path({str(gguf_file)!r})).parameters, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == ["28704", "False"]
