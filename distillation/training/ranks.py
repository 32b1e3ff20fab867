"""A process's place in a DDP group (`Ranks`): its share of each batch, the wrapped modules
and the reduced logs. A leaf the loop can name without importing the launcher (`parallel`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group."""

    rank: int
    world_size: int
    device: torch.device

    def shard(self, indices: Sequence[int]) -> tuple[list[int], float]:
        """This rank's contiguous share of a global batch, and its loss weight (its share of
        the batch times the number of ranks: DDP averages the ranks' gradients)."""
        n, size = len(indices), self.world_size
        start = self.rank * n // size
        end = (self.rank + 1) * n // size
        mine = list(indices[start:end])
        if not mine:  # a batch smaller than the group: run something, count nothing
            return list(indices[:1]), 0.0
        return mine, size * len(mine) / n

    def wrap(self, modules: Sequence[nn.Module], compute_loss: Any) -> nn.Module:
        """The trained modules and the loss as one DDP module (its forward is `compute_loss`), so
        their gradients are averaged across ranks during backward."""
        step = _Step(modules, compute_loss)
        ids = [self.device.index or 0] if self.device.type == "cuda" else None
        # Unused parameters (a head a loss does not reach) must not stall the reduction.
        return DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)

    def mean_logs(self, values: dict[str, float], count: float) -> dict[str, float]:
        """The whole batch's mean of per-rank means `values` over `count` examples each."""
        names = sorted(values)
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        sums = torch.tensor([values[k] * count for k in names] + [count], dtype=torch.float64,
                            device=device)
        dist.all_reduce(sums)
        total = float(sums[-1]) or 1.0
        return {k: float(v) / total for k, v in zip(names, sums[:-1].tolist(), strict=True)}


class _Step(nn.Module):
    """The modules trained together, whose forward is the loss of a batch."""

    def __init__(self, modules: Sequence[nn.Module], compute_loss: Any) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.compute_loss = compute_loss

    def forward(self, batch: dict[str, Tensor]) -> Any:
        return self.compute_loss(batch)


def rank_device(device: torch.device, rank: int) -> torch.device:
    return torch.device("cuda", rank) if device.type == "cuda" else torch.device("cpu")


