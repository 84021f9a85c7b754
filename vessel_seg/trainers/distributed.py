"""Multi-GPU / multi-node training through PyTorch DDP, launched with ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; without them training runs in one process.
CUDA uses NCCL, CPU uses gloo (how the tests run two processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group when launched by torchrun; a no-op for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Mean of a tensor over all processes (unchanged for a single process)."""
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= ctx.world_size
    return value


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
