"""Data-parallel learners over ``torch.distributed``: the same recipe, N processes.

Launch a recipe with ``torchrun --nproc_per_node N -m vlarl train RECIPE ...``. Backend:
NCCL on GPUs (process r on GPU ``LOCAL_RANK``), gloo on CPUs. Only rank 0 writes the run
(logs, checkpoints, evaluation); the others follow it.

- SFT: every process builds the same model from the same seed and draws the same global
  minibatch; each computes its loss on its own 1/N slice, and the gradients are averaged
  across processes (one all-reduce over a flat buffer, as DDP's buckets do) before the
  optimiser step. With a loss that is a mean over samples this is exactly the
  single-process gradient on the whole minibatch, so all processes stay identical.
- Off-policy RL (RLPD, HIL-SERL, ConRFT): rank 0 alone steps the env (or serves the
  actors) and holds the replay buffers; ``ShardedLearner`` sends each process its 1/N
  slice of every global minibatch rank 0 draws, with the learner's schedule (env steps,
  offline stage), and averages the gradients of every loss. The data, the buffers and the
  acting are those of the single-process run; the update is spread over N devices.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from vlarl.errors import VlarlError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # this process's device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device) -> DistContext:
    """The process group ``torchrun`` describes (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT), if any. On CUDA each process takes GPU ``LOCAL_RANK``.
    ``VLARL_DIST_TIMEOUT_S`` bounds how long a process waits for the others (rank 0's
    evaluations and checkpoints included; default one hour)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("VLARL_DIST_TIMEOUT_S", "3600")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def init_for(config: Any, resume: Any) -> tuple[Any, DistContext]:
    """A recipe's config (the resumed run's when resuming) and the process group on its device."""
    from vlarl.runtime.run import resolve_device

    config = resume.config if resume is not None else config
    if config is None:
        raise VlarlError("a config or a run to resume is needed")
    return config, init_from_env(resolve_device(config.device))


def require_divisible(batch_size: int, ctx: DistContext, key: str) -> None:
    """Every process checks it before anything starts: a batch splits into N equal slices."""
    if batch_size % ctx.world_size:
        raise VlarlError(f"{key} {batch_size} must be a multiple of the {ctx.world_size} processes")


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


def shutdown() -> None:
    """Leave the process group (if any) once every process is done: a clean exit instead of
    gloo's threads being torn down by the interpreter."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def start_run(config: Any, resume: Any, ctx: DistContext, progress: bool) -> tuple[Any, Any, bool]:
    """(run, config, progress) for a recipe under ``ctx``: rank 0 makes (or reopens) the run;
    the others hold a ``FollowerRun`` on the same path and show no progress bar."""
    from vlarl.runtime.run import Run

    run: Run | FollowerRun
    if ctx.is_main:
        run, config = Run.start(config, resume)
    else:
        config = resume.config if resume is not None else config
        run, progress = FollowerRun(config.run_dir if resume is None else resume.path, config), False
    barrier(ctx)
    return run, config, progress


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


# --- off-policy learners: rank 0 draws, every process updates on its slice -------------------
Layout = tuple[int, list[tuple[tuple[int, str], tuple[int, ...], torch.dtype]]]


def _pack(batches: list[dict[str, Any]], world: int) -> tuple[Layout, list[torch.Tensor]]:
    """The layout of G minibatches (nested dicts of tensors, batch first) and their tensors."""
    keys, tensors = [], []
    for g, batch in enumerate(batches):
        for path, t in _flatten(batch):
            keys.append((g, path))
            tensors.append(t)
    n = len(tensors[0])
    if n % world or any(len(t) != n for t in tensors):
        raise VlarlError(f"batch_size {n} must be a multiple of the {world} processes")
    return (len(batches), [(k, tuple(t.shape), t.dtype) for k, t in zip(keys, tensors)]), tensors


def _scatter(layout: Layout, tensors: list[torch.Tensor] | None, ctx: DistContext) -> list[dict[str, Any]]:
    """This process's 1/N slice of every tensor rank 0 packed (one scatter per dtype)."""
    count, specs = layout
    out: list[dict[str, Any]] = [{} for _ in range(count)]
    for dtype in dict.fromkeys(spec[2] for spec in specs):
        picked = [i for i, spec in enumerate(specs) if spec[2] == dtype]
        mine = [(specs[i][0], (specs[i][1][0] // ctx.world_size, *specs[i][1][1:])) for i in picked]
        wire = torch.uint8 if dtype == torch.bool else dtype  # gloo has no bool collectives
        recv = torch.empty(sum(math.prod(shape) for _, shape in mine), dtype=wire, device=ctx.device)
        chunks = None
        if tensors is not None:
            chunks = [torch.cat([tensors[i].chunk(ctx.world_size)[r].reshape(-1).to(ctx.device, wire)
                                 for i in picked]) for r in range(ctx.world_size)]
        dist.scatter(recv, chunks, src=0)
        offset = 0
        for (g, path), shape in mine:
            k = math.prod(shape)
            _set(out[g], path, recv[offset:offset + k].view(shape).to(dtype))
            offset += k
    return out


def scatter_batches(batches: list[dict[str, Any]] | None, ctx: DistContext) -> list[dict[str, Any]]:
    """Rank 0's minibatches -> this process's 1/N slice of each (the others pass None)."""
    message: list[Any] = [None]
    tensors = None
    if ctx.is_main:
        assert batches is not None
        message[0], tensors = _pack(batches, ctx.world_size)
    dist.broadcast_object_list(message, src=0)
    return _scatter(message[0], tensors, ctx)


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    items: list[tuple[str, torch.Tensor]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}/")
        else:
            items.append((prefix + key, value))
    return items


def _set(tree: dict[str, Any], path: str, value: torch.Tensor) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


class ShardedLearner:
    """A SAC-family learner (``update(batches, **kw)``, ``grad_sync``, ``schedule_attrs``)
    spread over the processes of ``ctx``. On rank 0 it stands in for the learner: the
    recipe calls ``update`` with its global minibatches, sets schedule attributes, reads
    the optimisers. The other ranks call ``follow()``, which runs the same updates on their
    slices until rank 0 calls ``stop()``. Losses that are means over samples give the
    single-process gradient; the noise a loss samples is each process's own, and a loss
    normalised by batch statistics (ConRFT's Q scale) uses its slice's."""

    def __init__(self, learner: Any, ctx: DistContext) -> None:
        object.__setattr__(self, "learner", learner)
        object.__setattr__(self, "ctx", ctx)
        learner.grad_sync = lambda params: average_gradients(params, ctx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.learner, name)

    def __setattr__(self, name: str, value: Any) -> None:  # env_steps, offline: the learner's
        setattr(self.learner, name, value)

    def update(self, batches: list[dict[str, Any]], **kwargs: Any) -> dict[str, torch.Tensor]:
        layout, tensors = _pack(batches, self.ctx.world_size)
        schedule = {k: getattr(self.learner, k) for k in getattr(self.learner, "schedule_attrs", ())}
        dist.broadcast_object_list([("update", schedule, kwargs, layout)], src=0)
        return self.learner.update(_scatter(layout, tensors, self.ctx), **kwargs)

    def replica_gap(self) -> float:
        """Rank 0: the largest parameter difference between any process's agent and rank 0's."""
        dist.broadcast_object_list([("check", None, None, None)], src=0)
        return max_replica_difference(self.learner.agent, self.ctx)

    def stop(self) -> None:
        """Rank 0: release the followers (call it however the run ends)."""
        dist.broadcast_object_list([("stop", None, None, None)], src=0)

    def follow(self) -> int:
        """Ranks > 0: run rank 0's updates on this process's slices until it stops; returns
        the number of updates."""
        done = 0
        while True:
            message: list[Any] = [None]
            dist.broadcast_object_list(message, src=0)
            op, schedule, kwargs, layout = message[0]
            if op == "stop":
                return done
            if op == "check":
                max_replica_difference(self.learner.agent, self.ctx)
                continue
            for key, value in schedule.items():
                setattr(self.learner, key, value)
            self.learner.update(_scatter(layout, None, self.ctx), **kwargs)
            done += 1


def follow_updates(run: Any, agent: torch.nn.Module, learner: Any, ctx: DistContext) -> dict[str, Any]:
    """A follower's share of an off-policy recipe: the same agent and optimisers (rank 0's
    latest checkpoint on resume, then rank 0's weights), updated on its slices of rank 0's
    minibatches until rank 0 stops."""
    run.restore({"agent": agent}, learner.optimizers())
    broadcast_module(agent, ctx)
    return {"follower": True, "rank": ctx.rank, "updates": ShardedLearner(learner, ctx).follow()}


def shard_learner(learner: Any, ctx: DistContext) -> Any:
    """``learner`` itself in a single process, else a ``ShardedLearner`` over ``ctx``."""
    return ShardedLearner(learner, ctx) if ctx.enabled else learner


def max_replica_difference(module: torch.nn.Module, ctx: DistContext) -> float:
    """Largest difference between this module's parameters on any process and on rank 0
    (0.0 when the replicas are identical, as data-parallel training keeps them)."""
    if not ctx.enabled:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    gap = (flat - ref).abs().max()
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return float(gap)


# --- FSDP: large trunks sharded over the processes --------------------------------------------
def fully_shard_modules(modules: Iterable[torch.nn.Module], ctx: DistContext) -> None:
    """Shard each module's parameters (FSDP2 ``fully_shard``) over every process of ``ctx``:
    each process keeps 1/N of them and gathers a module's whole weights only for its
    forward and backward, then reduce-scatters (averages) its gradients. Each module must be
    run through its ``forward`` (the hooks that gather live there); parameters outside these
    modules stay replicated and are averaged with ``average_gradients``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for module in modules:
        fully_shard(module, mesh=mesh)


def replicated(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """The parameters FSDP does not shard (plain tensors, not DTensors)."""
    from torch.distributed.tensor import DTensor

    return [p for p in params if not isinstance(p, DTensor)]


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float, ctx: DistContext) -> torch.Tensor:
    """``clip_grad_norm_`` over a mix of sharded (DTensor) and replicated gradients: the norm of
    the whole gradient, every process scaling by the same factor."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    device = grads[0].device if grads else ctx.device
    local = torch.stack([g.float().pow(2).sum() for g in sharded]).sum() if sharded else torch.zeros((), device=device)
    if ctx.enabled and sharded:
        dist.all_reduce(local)  # each process holds a different shard of these
    total = local + (torch.stack([g.float().pow(2).sum() for g in plain]).sum() if plain else 0.0)
    norm = total.sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in sharded + plain:
        g.mul_(scale.to(g.dtype))
    return norm


class SavedOptimizer:
    """Stands in for an optimiser in a checkpoint: holds a full (unsharded, name-keyed)
    optimiser state, to save, or as loaded until the sharded optimiser exists."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        assert self.state is not None
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


def full_state(module: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, optimiser state) of a sharded module, whole, on rank 0's CPU (empty on the
    others). Every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=full), get_optimizer_state_dict(module, opt, options=full)


def load_full_optimizer_state(module: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """A ``full_state`` optimiser state into a sharded module's optimiser (every process)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, opt, state, options=StateDictOptions(full_state_dict=True))
