"""Loading a model folder reads only that folder, runs no shipped code and fetches nothing.

The folders here are made on disk directly, as a model registered before upload checks existed
(or a local model path) would be: the checks at load time must refuse them on their own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distillation.export.predict import Predictor
from distillation.models.files import UnsafeModel, check_model_dir
from distillation.models.loading import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _victim(tiny_teacher_dir: Path, root: Path) -> Path:
    """Another tenant's model: the teacher with every weight changed."""
    victim = _copy(tiny_teacher_dir, root / "model-victim")
    weights = {k: v + 1.0 for k, v in load_file(victim / "model.safetensors").items()}
    save_file(weights, victim / "model.safetensors", metadata={"format": "pt"})
    return victim


def _sharded_to(model_dir: Path, shard: str) -> None:
    """Replace the folder's weights by an index naming `shard` for every tensor."""
    names = list(load_file(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, shard)}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("shard", ["../model-victim/model.safetensors", "ABSOLUTE"])
def test_weight_map_out_of_the_folder_is_refused(tiny_teacher_dir: Path, tmp_path: Path,
                                                 shard: str) -> None:
    """Our own check refuses an index naming a file outside the folder, whatever the installed
    transformers would do with it (some versions follow it, later ones refuse it themselves): the
    refusal must be `UnsafeModel` naming the entry, raised before transformers reads anything."""
    # Given a model whose weight index points at a neighbouring model's weights.
    victim = _victim(tiny_teacher_dir, tmp_path)
    attacker = _copy(tiny_teacher_dir, tmp_path / "model-attacker")
    shard = str(victim / "model.safetensors") if shard == "ABSOLUTE" else shard
    _sharded_to(attacker, shard)

    # When the folder is checked, or loaded through the service's loader, then it is refused by
    # our check, naming the entry.
    needle = r"weight_map\[.*" + re.escape(repr(shard))
    with pytest.raises(UnsafeModel, match=needle):
        check_model_dir(attacker)
    with pytest.raises(UnsafeModel, match=needle):
        Predictor.load(attacker)


def test_a_sharded_save_inside_its_folder_loads(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy(tiny_teacher_dir, tmp_path / "sharded")
    _sharded_to(model_dir, "model-00001-of-00001.safetensors")

    predictor = Predictor.load(model_dir)

    expected = load_file(tiny_teacher_dir / "model.safetensors")["classifier.weight"]
    assert torch.equal(predictor.model.state_dict()["classifier.weight"], expected)


def test_a_link_out_of_the_folder_is_refused(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    victim = _victim(tiny_teacher_dir, tmp_path)
    attacker = _copy(tiny_teacher_dir, tmp_path / "model-attacker")
    (attacker / "model.safetensors").unlink()
    os.symlink(victim / "model.safetensors", attacker / "model.safetensors")

    with pytest.raises(UnsafeModel, match=r"model\.safetensors \(a link\) leads outside"):
        Predictor.load(attacker)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"attn_implementation": "kernels-community/evil"}, "'attn_implementation'"),
        ({"auto_map": {"AutoModelForSequenceClassification": "evil.Model"}}, "'auto_map'"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "'quantization_config'"),
        ({"vocab_size": 2_000_000}, "does not match the weights"),
    ],
)
def test_config_that_steers_the_loader_is_refused_before_loading(
    tiny_teacher_dir: Path, tmp_path: Path, change: dict[str, object], needle: str,
) -> None:
    model_dir = _copy(tiny_teacher_dir, tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, **change}))

    with pytest.raises(UnsafeModel, match=needle):
        Predictor.load(model_dir)


# Where a settings file may send the tokenizer: an absolute path, a '../' path to a neighbouring
# model, a path into another folder; nested under a key and in another settings file too.
OUTSIDE_FILES = [
    ("tokenizer_config.json", {"vocab_file": "/etc/passwd"}, "'vocab_file' is '/etc/passwd'"),
    ("tokenizer_config.json", {"merges_file": "../model-victim/merges.txt"}, "'merges_file'"),
    ("tokenizer_config.json", {"tokenizer_file": "model-victim/tokenizer.json"}, "'tokenizer_file'"),
    ("tokenizer_config.json", {"files": {"spm_file": "~/x.model"}}, "'files.spm_file'"),
    ("special_tokens_map.json", {"vocab_files": ["vocab.txt", "/etc/hosts"]}, r"'vocab_files\[1\]'"),
    ("tokenizer_config.json", {"name_or_path": "/srv/models/victim"}, "'name_or_path'"),
    ("config.json", {"_name_or_path": "../model-victim"}, "'_name_or_path'"),
]


@pytest.mark.parametrize(("settings_file", "change", "needle"), OUTSIDE_FILES)
def test_settings_naming_files_outside_the_folder_are_refused_at_load(
    tiny_teacher_dir: Path, tmp_path: Path, settings_file: str, change: dict[str, object],
    needle: str,
) -> None:
    # Given a model planted on disk (no upload checks) that names a file outside its folder and
    # ships no vocabulary of its own, so the named file would be read as one.
    _victim(tiny_teacher_dir, tmp_path)
    model_dir = _copy(tiny_teacher_dir, tmp_path / "model")
    for own in ("vocab.txt", "tokenizer.json"):
        (model_dir / own).unlink(missing_ok=True)
    path = model_dir / settings_file
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, **change}))

    # When the worker or predict loads it, then it is refused, naming the file and the key.
    with pytest.raises(UnsafeModel, match=f"{re.escape(settings_file)}: {needle}"):
        load_tokenizer(model_dir)
    with pytest.raises(UnsafeModel, match=needle):
        Predictor.load(model_dir)


def test_settings_naming_plain_files_of_the_folder_load(tiny_teacher_dir: Path,
                                                        tmp_path: Path) -> None:
    """A plain file name inside the folder (or one that is absent) and a Hub id load as before."""
    model_dir = _copy(tiny_teacher_dir, tmp_path / "model")
    path = model_dir / "tokenizer_config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "vocab_file": "vocab.txt", "merges_file": "absent.txt",
                                "name_or_path": "nreimers/MiniLM-L6-H384-uncased"}))

    tokenizer = load_tokenizer(model_dir)

    assert tokenizer.convert_tokens_to_ids("[CLS]") == 101


def test_the_cli_keeps_the_hub_offline() -> None:
    """`distill` (serve, api, worker: all go through `main`) sets offline mode before anything
    imports huggingface_hub, which reads it once at import."""
    script = ("import sys; sys.argv = ['distill', '--help']\n"
              "from distill_cli.main import main\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "import huggingface_hub.constants as c, os\n"
              "print(c.HF_HUB_OFFLINE, os.environ.get('TRANSFORMERS_OFFLINE'))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout

    assert out.strip().splitlines()[-1] == "True 1"
