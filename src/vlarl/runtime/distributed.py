"""Data-parallel learners over ``torch.distributed``: the same recipe, N processes.

Launch a recipe with ``torchrun --nproc_per_node N -m vlarl train sft ...``: every process
builds the same model from the same seed and draws the same global minibatch; each computes
its loss on its own 1/N slice, and the gradients are averaged across processes (one
all-reduce over a flat buffer, as DDP's buckets do) before the optimiser step. With a loss
that is a mean over samples this is exactly the single-process gradient on the whole
minibatch, so all processes stay identical. Only rank 0 writes the run (logs, checkpoints,
evaluation); the others follow it. Backend: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vlarl.errors import VlarlError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device) -> DistContext:
    """The process group ``torchrun`` describes (WORLD_SIZE, RANK, MASTER_ADDR/PORT), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size())


def shard(batch: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This process's contiguous 1/N slice of a global minibatch (of indices or samples)."""
    if not ctx.enabled:
        return batch
    if len(batch) % ctx.world_size:
        raise VlarlError(f"batch_size {len(batch)} must be a multiple of the {ctx.world_size} processes")
    return batch.chunk(ctx.world_size)[ctx.rank]


def average_gradients(params: Iterable[torch.nn.Parameter], ctx: DistContext) -> None:
    """Replace every gradient by its mean over the processes (missing gradients count as 0)."""
    if not ctx.enabled:
        return
    params = [p for p in params if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's weights and buffers to every process (the same start, whatever the init)."""
    if ctx.enabled:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


class FollowerRun:
    """What a rank other than 0 holds instead of a ``Run``: the same path and config, reads
    the newest checkpoint, writes nothing."""

    def __init__(self, path: Any, config: Any) -> None:
        from pathlib import Path

        self.path, self.config = Path(path), config

    def log(self, step: int, **scalars: float) -> None:
        pass

    def save(self, *args: Any, **kwargs: Any) -> None:
        pass

    def write_results(self, *args: Any, **kwargs: Any) -> None:
        pass

    def restore(self, modules: Any, optimizers: Any = None, generators: Any = None) -> dict[str, Any] | None:
        from vlarl.runtime.checkpoint import latest_checkpoint, load_checkpoint

        ckpt = latest_checkpoint(self.path / "checkpoints")
        return None if ckpt is None else load_checkpoint(ckpt, modules, optimizers, generators)

    def close(self) -> None:
        pass
