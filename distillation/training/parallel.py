"""The distill stage on several devices: `torch.distributed` DDP, one process per device
(`hyperparameters.devices`), on one machine.

The process that runs the job is rank 0: it prepares the data, computes the teacher cache once
(before the other ranks start), reports progress and metrics, evaluates after every epoch and
writes the checkpoints, exactly as a single-device run does. `launch` starts ranks 1..N-1 with
`torch.multiprocessing` (spawn: a fresh interpreter each, safe with CUDA) and hands them what the
loop needs in one file (`torch.save` of the student, the loss module, the teacher cache or the
teacher, the encoded examples and the collator); they train their share of every batch and keep
nothing. Backend: `nccl` on CUDA (rank r on `cuda:r`), `gloo` on the CPU; the rendezvous is a
`TCPStore` whose server listens on 127.0.0.1 only, on a free port rank 0 takes (torch's own server
would listen on every interface, and the store has no authentication: anyone who reached it could
join or disturb the group); gloo's connections between ranks use the loopback interface too
(`GLOO_SOCKET_IFNAME`, unless the operator set it).

Same global batch. Every rank builds the same batch order (`length_grouped_batches`, same seed)
and takes a contiguous share of each batch of `batch_size` examples (`shard`: sizes differ by at
most one). Each rank's loss is weighted by its share of the batch, so DDP's average of the
gradients is the gradient of the whole batch's mean loss: a run on N devices takes the same
optimizer steps as one device on the same batches, up to float rounding (exactly so for losses
that are a mean over examples; a token-level loss averaged over tokens weighs a shard by its
examples, not its tokens). A rank whose share is empty (a last batch smaller than N) runs one
example with weight 0. Logged losses are the whole batch's, reduced across ranks.

Stopping. Rank 0 alone decides (cancel, pause, a lost lease): when it leaves the loop for any
reason, `launch` terminates the other ranks, wherever they wait. A rank that dies makes rank 0's
next collective fail (`gloo`), or time out after `TIMEOUT` (`nccl`). Resume: every rank restores
the same checkpoint (only rank 0 writes them), so a run may resume on another number of devices.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from distillation.config import NullReporter
from distillation.layout import DDP_PAYLOAD
from distillation.training.checkpoint import Checkpointer
from distillation.training.loop import cpu_bf16, cpu_bf16_on, fit
from distillation.training.ranks import Ranks, rank_device

# Longest a rank waits in a collective: covers rank 0's evaluation at an epoch's end.
TIMEOUT = timedelta(minutes=60)


@contextmanager
def launch(world_size: int, *, device: torch.device, work_dir: Path,
           fit_kwargs: dict[str, Any], checkpoint_modules: dict[str, nn.Module]
           ) -> Iterator[Ranks]:
    """Start ranks 1..world_size-1 running `fit(**fit_kwargs)` and join them as rank 0; yields
    rank 0's `Ranks`. On leaving, the other ranks are waited for (the loop ended) or terminated
    (rank 0 raised), and the group is destroyed."""
    if device.type == "cuda" and torch.cuda.device_count() < world_size:
        raise ValueError(f"hyperparameters.devices is {world_size}, but this worker sees "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    work_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".", suffix=f"-{DDP_PAYLOAD}", dir=work_dir)
    os.close(fd)
    payload = Path(name)
    torch.save({"fit": fit_kwargs, "checkpoint_modules": checkpoint_modules,
                "cpu_bf16": cpu_bf16_on()}, payload)
    store = loopback_store(world_size)
    with gloo_on_loopback():
        context = mp.start_processes(
            _run_rank, args=(store.port, world_size, backend, device.type, str(payload),
                             str(work_dir)),
            nprocs=world_size - 1, join=False, start_method="spawn")
    finished = False
    try:
        with gloo_on_loopback():
            dist.init_process_group(backend, store=store, rank=0, world_size=world_size,
                                    timeout=TIMEOUT)
        yield Ranks(0, world_size, rank_device(device, 0))
        finished = True
    finally:
        if finished:
            while not context.join():  # raises when a rank failed
                pass
        else:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            for process in context.processes:
                process.join(timeout=30)
        if dist.is_initialized():
            dist.destroy_process_group()
        payload.unlink(missing_ok=True)


IFF_LOOPBACK = 0x8


def loopback_interface(sys_net: Path = Path("/sys/class/net")) -> str:
    """The name of this machine's loopback interface (`lo` on Linux), read from its flags."""
    for flags in sorted(sys_net.glob("*/flags")):
        try:
            if int(flags.read_text().strip(), 16) & IFF_LOOPBACK:
                return flags.parent.name
        except (OSError, ValueError):
            continue
    return "lo"


@contextmanager
def gloo_on_loopback() -> Iterator[None]:
    """gloo's own connections between ranks listen on the address the host name resolves to
    unless GLOO_SOCKET_IFNAME names an interface: name the loopback one while the group forms
    (ranks started meanwhile inherit it), unless the operator chose one."""
    if "GLOO_SOCKET_IFNAME" in os.environ:
        yield
        return
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    try:
        yield
    finally:
        os.environ.pop("GLOO_SOCKET_IFNAME", None)


def loopback_store(world_size: int) -> dist.TCPStore:
    """The rendezvous's server, listening on 127.0.0.1 only: torch binds its own listening socket
    to every address, so rank 0 binds one to loopback and hands it over."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
    except BaseException:
        listener.close()
        raise
    fd = listener.detach()  # the store owns it from here
    try:
        return dist.TCPStore("127.0.0.1", port, world_size, is_master=True, timeout=TIMEOUT,
                             wait_for_workers=False, master_listen_fd=fd)
    except BaseException:
        os.close(fd)
        raise


def _run_rank(index: int, port: int, world_size: int, backend: str, device_type: str,
              payload: str, work_dir: str) -> None:
    """Rank index+1: the same loop on its share of every batch, reporting nothing."""
    rank = index + 1
    device = rank_device(torch.device(device_type), rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=TIMEOUT)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=TIMEOUT)
    try:
        loaded = torch.load(payload, map_location=device, weights_only=False)
        kwargs = loaded["fit"]
        reporter = NullReporter()
        checkpoints = RestoreOnly(Checkpointer(Path(work_dir), hp=kwargs["hp"],
                                               modules=loaded["checkpoint_modules"],
                                               reporter=reporter))
        with cpu_bf16(loaded["cpu_bf16"]):  # the precision rank 0 trains in
            fit(**kwargs, device=device, reporter=reporter, checkpoints=checkpoints,
                ranks=Ranks(rank, world_size, device))
    finally:
        dist.destroy_process_group()


class RestoreOnly:
    """The checkpoints of ranks other than 0: restore the same state, write nothing."""

    def __init__(self, checkpoints: Any) -> None:
        self.checkpoints = checkpoints

    def restore(self, state: Any) -> None:
        self.checkpoints.restore(state)

    def after_step(self, state: Any) -> None:
        pass
