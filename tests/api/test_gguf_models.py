"""GGUF through `/v1/models` on the real Postgres: an uploaded .gguf becomes a causal-LM teacher
that serves and downloads as the model it was written from; hostile files are each a 400
`invalid_gguf` naming the problem, with nothing stored; the built-in SmolLM2 is listed from its
file's header without being converted, and a GGUF built-in is converted once, on first use, by
one process however many ask at once."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import assert_error, upload_records
from tests.factories.gguf import layout, patched, write_llama_gguf
from tests.factories.lm import copy_records, save_chat_llama

SMOLLM2 = "smollm2-135m-instruct"
TINY_PARAMETERS = 28_704


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_chat_llama(tmp_path_factory.mktemp("gguf_api") / "hf", seed=3)


@pytest.fixture(scope="module")
def tiny_gguf(llama: Path) -> Path:
    return write_llama_gguf(llama, llama.parent / "tiny.gguf")


def upload_gguf(client: Any, auth: dict[str, str], data: bytes, name: str = "tiny.gguf") -> Any:
    return client.post("/v1/models", headers=auth,
                       files={"file": (name, data, "application/octet-stream")})


def stored(settings: Any) -> list[str]:
    """Everything under the models folder (models, and any leftover of a refused upload)."""
    folder = settings.models_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def download(client: Any, auth: dict[str, str], model_id: str, dest: Path) -> Path:
    with client.stream("GET", f"/v1/models/{model_id}/download", headers=auth) as response:
        assert response.status_code == 200, response.read()
        data = b"".join(response.iter_bytes())
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def chat_inputs(tokenizer: Any, question: str) -> Any:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         add_generation_prompt=True, return_dict=True,
                                         return_tensors="pt")


def greedy(loaded: tuple[Any, Any], prompt: str, new_tokens: int) -> str:
    """What predict serves for `prompt`: greedy, the new tokens only, decoded."""
    model, tokenizer = loaded
    inputs = tokenizer([prompt], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return str(tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))


def test_an_uploaded_gguf_becomes_a_teacher_that_serves_and_downloads_as_its_source(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], settings: Any, llama: Path,
    tiny_gguf: Path, tmp_path: Path,
) -> None:
    import torch

    response = upload_gguf(client, auth, tiny_gguf.read_bytes())

    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["object"], model["source"], model["task"]) == ("model", "uploaded", "causal-lm")
    assert (model["filename"], model["labels"], model["parameters"]) == (
        "tiny.gguf", None, TINY_PARAMETERS)
    assert stored(settings) == [model["id"]]
    assert model["size_bytes"] == (settings.models_dir / model["id"] / "model.safetensors").stat(
        ).st_size
    assert client.get(f"/v1/models/{model['id']}", headers=auth).json() == model
    assert_error(client.get(f"/v1/models/{model['id']}", headers=other_auth), 404)
    original = load(llama)

    # Predict serves what the model it was written from generates.
    predicted = client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                            json={"inputs": ["copy red cat"], "max_new_tokens": 6})
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["data"][0]["text"].strip() == greedy(original, "copy red cat", 6).strip()

    # The download loads with from_pretrained: the same chat template, tokens and logits.
    converted = load(download(client, auth, model["id"], tmp_path / "download"))
    inputs = chat_inputs(original[1], "copy red cat one")
    assert converted[1].chat_template == original[1].chat_template
    assert torch.equal(chat_inputs(converted[1], "copy red cat one")["input_ids"],
                       inputs["input_ids"])
    with torch.no_grad():
        assert torch.equal(converted[0](**inputs).logits, original[0](**inputs).logits)
    steps = {"max_new_tokens": 8, "do_sample": False}
    assert torch.equal(converted[0].generate(**inputs, **steps),
                       original[0].generate(**inputs, **steps))


Build = Callable[[bytes, Any, Path, Path], bytes]  # (file, its layout, the source model, tmp)


def _key_value_at(lay: Any, key: str) -> int:
    """Where the value of metadata `key` starts (after its name and its type)."""
    return int(lay.keys[key]) + 8 + len(key.encode()) + 4


def _tensor(lay: Any, name: str) -> Any:
    return next(t for t in lay.tensors if t.name == name)


def _written(**changes: Any) -> Build:
    return lambda _data, _lay, llama, tmp: write_llama_gguf(llama, tmp / "x.gguf",
                                                            **changes).read_bytes()


def _quantised_with_ragged_blocks(_data: bytes, _lay: Any, llama: Path, tmp: Path) -> bytes:
    import gguf

    path = write_llama_gguf(llama, tmp / "q8.gguf", weight_type=gguf.GGMLQuantizationType.Q8_0)
    embedding = _tensor(layout(path), "token_embd.weight")
    return patched(path.read_bytes(), embedding.dims_at, "<Q", 48)  # 1.5 blocks of 32


HOSTILE: dict[str, tuple[Build, str]] = {
    "bad magic": (lambda d, lay, m, t: b"GGUX" + d[4:], "not a GGUF file: it starts with b'GGUX'"),
    "an archive named .gguf": (lambda d, lay, m, t: b"\x1f\x8b\x08\x00" + d[4:],
                               "not a GGUF file"),
    "version 1": (lambda d, lay, m, t: patched(d, 4, "<I", 1), "GGUF version 1 is not supported"),
    "big-endian": (lambda d, lay, m, t: patched(d, 4, ">I", 3), "a big-endian file"),
    "huge tensor count": (lambda d, lay, m, t: patched(d, lay.tensor_count_at, "<Q", 2**40),
                          "its tensor count is 1099511627776; at most 65536 are accepted"),
    "huge metadata count": (lambda d, lay, m, t: patched(d, lay.key_count_at, "<Q", 2**40),
                            "its metadata key count is 1099511627776"),
    "huge key length": (lambda d, lay, m, t: patched(d, lay.first_key_length_at, "<Q", 2**60),
                        "the length of metadata key 0 is 1152921504606846976"),
    "huge string length": (
        lambda d, lay, m, t: patched(d, _key_value_at(lay, "tokenizer.chat_template"), "<Q",
                                     2**40),
        "the length of metadata 'tokenizer.chat_template' is 1099511627776; at most 1048576"),
    "huge array length": (
        lambda d, lay, m, t: patched(d, _key_value_at(lay, "tokenizer.ggml.tokens") + 4, "<Q",
                                     2**50),
        "the length of metadata 'tokenizer.ggml.tokens' is 1125899906842624; at most 1048576 "
        "are accepted"),
    "tensor offset past the end": (
        lambda d, lay, m, t: patched(d, lay.tensors[-1].offset_at, "<Q", 2**40),
        "at offset 1099511627776) ends at byte 1099511635424, past the end of the file (122336 bytes)"),
    "overlapping tensors": (
        lambda d, lay, m, t: patched(d, _tensor(lay, "blk.0.attn_norm.weight").offset_at, "<Q", 0),
        "tensor 'token_embd.weight' (F32 [316, 32]: 40448 bytes at offset 0) overlaps tensor "
        "'blk.0.attn_norm.weight'"),
    "misaligned tensor": (
        lambda d, lay, m, t: patched(d, _tensor(lay, "blk.0.attn_norm.weight").offset_at, "<Q",
                                     _tensor(lay, "blk.0.attn_norm.weight").offset + 4),
        "the offset is not a multiple of the file's alignment (32)"),
    "shape larger than its bytes": (
        lambda d, lay, m, t: patched(d, _tensor(lay, "output_norm.weight").dims_at, "<Q", 64),
        "tensor 'output_norm.weight' (F32 [64]: 256 bytes at offset 114688) ends at byte 122464, "
        "past the end of the file (122336 bytes)"),
    "shape of ragged blocks": (_quantised_with_ragged_blocks,
                               "its shape [316, 48] is no whole number of Q8_0 blocks"),
    "unknown tensor type": (
        lambda d, lay, m, t: patched(d, _tensor(lay, "blk.0.ffn_up.weight").type_at, "<I", 99),
        "tensor 'blk.0.ffn_up.weight' has an unknown ggml type 99"),
    "too many dimensions": (
        lambda d, lay, m, t: patched(d, _tensor(lay, "blk.0.ffn_up.weight").dims_at - 4, "<I", 9),
        "tensor 'blk.0.ffn_up.weight' has 9 dimensions; GGUF tensors have 1 to 4"),
    "truncated data": (lambda d, lay, m, t: d[:-1000], "past the end of the file"),
    "truncated header": (lambda d, lay, m, t: d[:3000], "the file ends inside"),
    "unsupported architecture": (_written(architecture="rwkv6"),
                                 "architecture 'rwkv6' is not one transformers can dequantise"),
    "encoder-decoder architecture": (_written(architecture="t5"), "architecture 't5' is not one"),
    "no tokenizer": (_written(tokenizer=False), "'tokenizer.ggml.model' is missing"),
    "special token outside the vocabulary": (
        lambda d, lay, m, t: patched(d, _key_value_at(lay, "tokenizer.ggml.eos_token_id"), "<I",
                                     10**6),
        "'tokenizer.ggml.eos_token_id' is 1000000, not a token id (the vocabulary has 316"),
    "a missing tensor": (_written(skip=["blk.1.ffn_down.weight"]),
                         "it lacks the weights of model.layers.1.mlp.down_proj.weight"),
    "more layers than tensors": (_written(num_hidden_layers=100_000),
                                 "'num_hidden_layers' is 100000, but the weights hold only 20"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_gguf_is_refused_naming_the_problem(
    case: str, client: Any, auth: dict[str, str], settings: Any, llama: Path, tiny_gguf: Path,
    tmp_path: Path,
) -> None:
    build, needle = HOSTILE[case]
    data = build(tiny_gguf.read_bytes(), layout(tiny_gguf), llama, tmp_path)

    error = assert_error(upload_gguf(client, auth, data), 400, code="invalid_gguf", param="file")

    assert needle in error["message"]
    assert error["message"].startswith("The GGUF file was refused: ")
    assert stored(settings) == []  # no model, and nothing left of the upload
    assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]
            if m["source"] != "builtin"] == []


def test_a_gguf_over_the_parameter_limit_is_refused(
    client: Any, auth: dict[str, str], settings: Any, tiny_gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_MAX_GGUF_PARAMETERS", "20000")
    get_settings.cache_clear()

    error = assert_error(upload_gguf(client, auth, tiny_gguf.read_bytes()), 400,
                         code="invalid_gguf")
    assert "its tensors hold 28,704 values; at most 20,000 are accepted" in error["message"]
    assert stored(settings) == []


def test_smollm2_is_listed_from_its_header_without_being_converted(
    client: Any, auth: dict[str, str], settings: Any
) -> None:
    listing = client.get("/v1/models", headers=auth).json()["data"]

    assert [m["id"] for m in listing[:2]] == ["all-minilm-l6-v2", SMOLLM2]
    smollm2 = listing[1]
    assert (smollm2["source"], smollm2["owned_by"], smollm2["task"]) == (
        "builtin", "system", "causal-lm")
    assert smollm2["parameters"] == 134_515_008
    assert smollm2["size_bytes"] == 4 * 134_515_008  # float32 once converted
    assert "SmolLM2-135M-Instruct" in smollm2["description"]
    assert client.get(f"/v1/models/{SMOLLM2}", headers=auth).json() == smollm2
    assert_error(client.delete(f"/v1/models/{SMOLLM2}", headers=auth), 409)
    assert not (settings.resolved_data_dir / "builtin").exists()  # nothing was converted


@pytest.fixture
def tiny_builtin(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A GGUF built-in whose file is the tiny Llama: what SmolLM2 goes through, in a second."""
    from app.models import builtin

    model = builtin.GgufBuiltin(id="tiny-chat-gguf", task="causal-lm", description="tiny",
                                locate=lambda: tiny_gguf)
    monkeypatch.setitem(builtin.BUILTINS, model.id, model)
    return model


def test_a_gguf_builtin_is_converted_on_first_use_and_teaches(
    client: Any, auth: dict[str, str], settings: Any, tiny_builtin: Any, llama: Path,
    tmp_path: Path,
) -> None:
    import torch

    listed = client.get(f"/v1/models/{tiny_builtin.id}", headers=auth).json()
    assert (listed["parameters"], listed["size_bytes"]) == (TINY_PARAMETERS, 4 * TINY_PARAMETERS)
    assert not tiny_builtin.is_ready(settings)

    # A job naming it as its teacher converts it (once), and is accepted.
    train = upload_records(client, auth, copy_records(16, seed=1))
    body = {"task": "causal-lm", "teacher": {"model": tiny_builtin.id},
            "student": {"architecture": {"num_layers": 1}, "init": "teacher"},
            "training_file": train, "data": {"max_seq_length": 32}}
    created = client.post("/v1/distillation/jobs", headers=auth, json=body)
    assert created.status_code == 201, created.text
    folder = tiny_builtin.directory(settings)
    assert folder.is_relative_to(settings.resolved_data_dir / "builtin")
    assert (folder / "model.safetensors").is_file()

    # Listed from the converted folder now; downloadable as any model.
    listed = client.get(f"/v1/models/{tiny_builtin.id}", headers=auth).json()
    assert listed["size_bytes"] == (folder / "model.safetensors").stat().st_size
    model, tokenizer = load(download(client, auth, tiny_builtin.id, tmp_path / "download"))
    original, _ = load(llama)
    inputs = chat_inputs(tokenizer, "copy sun moon")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, original(**inputs).logits)


def test_a_gguf_builtin_is_converted_by_one_of_those_asking_at_once(
    settings: Any, tiny_builtin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.models import builtin

    conversions: list[Path] = []
    convert = builtin.convert_gguf

    def slow_convert(source: Path, out: Path, **kwargs: Any) -> Any:
        conversions.append(out)
        time.sleep(0.5)  # long enough for the others to arrive while it runs
        return convert(source, out, **kwargs)

    monkeypatch.setattr(builtin, "convert_gguf", slow_convert)
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(tiny_builtin.prepare(settings)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(conversions) == 1
    assert paths == [tiny_builtin.directory(settings)] * 3
    assert (paths[0] / "config.json").is_file()


@pytest.mark.slow
def test_smollm2_converts_once_downloads_and_answers(
    client: Any, auth: dict[str, str], settings: Any, tmp_path: Path
) -> None:
    """The real built-in: converted on its first download, loaded from it, asked a question."""
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    folder = download(client, auth, SMOLLM2, tmp_path / "smollm2")
    converted_s = time.perf_counter() - started
    started = time.perf_counter()
    model, tokenizer = load(folder)
    loaded_s = time.perf_counter() - started

    weights = (folder / "model.safetensors").stat().st_size
    listed = client.get(f"/v1/models/{SMOLLM2}", headers=auth).json()
    assert listed["size_bytes"] == weights and listed["parameters"] == 134_515_008
    inputs = chat_inputs(tokenizer, "What is the capital of France?")
    started = time.perf_counter()
    ids = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    generated_s = time.perf_counter() - started
    answer = tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\nSmolLM2: converted and downloaded in {converted_s:.1f} s ({weights:,} bytes of "
          f"weights), loaded in {loaded_s:.1f} s, 20 tokens in {generated_s:.1f} s: {answer!r}")
    assert "Paris" in answer
    # Converted once: a second download reads the same folder.
    again = download(client, auth, SMOLLM2, tmp_path / "again")
    assert (again / "model.safetensors").stat().st_size == weights
    assert len(list((settings.resolved_data_dir / "builtin").glob(f"{SMOLLM2}-*"))) == 1
