"""Supervised fine-tuning (SFT) of a VLA policy on episode datasets, multi-task and
language-conditioned, with periodic evaluation, checkpoints and resume.

With a frozen encoder the image tokens of every frame are computed once and cached, so
training steps run only the trunk and head. Random-shift augmentation applies when the
encoder runs live (trainable encoder or ``cache_features=false``).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vlarl.algos.bc import bc_loss
from vlarl.data import EpisodeDataset
from vlarl.data.augment import random_shift
from vlarl.errors import VlarlError
from vlarl.fileio import atomic_write_text
from vlarl.models.policy import PolicyConfig, VLAPolicy
from vlarl.runtime import Run, finish_stage, latest_checkpoint, load_checkpoint, seed_everything
from vlarl.runtime.config import check_ranges, ranged

PARALLEL = ("ddp", "fsdp")


@dataclass
class SFTConfig:
    datasets: list[str] = field(default_factory=lambda: ["data/demos"])
    # the first N episodes of each (low-data runs), or N per dataset (RLDG's mix:1 takes 0 of its demos)
    episodes_per_dataset: int | list[int] | None = ranged(None, ge=0)  # noqa: RUF009 -- ranged makes a field
    skip_bad_episodes: bool = False  # leave damaged episodes out (named and counted) instead of stopping
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    init_run: str | None = None  # fine-tune the policy of this finished SFT run (its spec must match)
    steps: int = ranged(2000, ge=1)
    batch_size: int = ranged(64, ge=1)
    lr: float = ranged(3e-4, ge=0)  # 0 holds the weights (a fine-tuning check)
    weight_decay: float = ranged(1e-4, ge=0)
    augment: bool = True
    cache_features: bool = True
    eval_every: int = ranged(0, ge=0)  # 0: evaluate at the end only
    eval_episodes: int = ranged(10, ge=1)
    eval_envs: int = ranged(2, ge=1)
    eval_episode_length: int | None = ranged(None, ge=1)
    video_episodes: int = ranged(2, ge=0)
    save_every: int = ranged(500, ge=1)
    log_every: int = ranged(50, ge=1)
    measure_cache_speedup: bool = False
    seed: int = ranged(0, ge=0)
    run_dir: str = "runs/sft"
    device: str = "auto"
    amp: bool = True  # bfloat16 autocast on CUDA; ignored on CPU
    # Under torchrun: "ddp" keeps a whole replica per process; "fsdp" shards the image encoder and
    # the trunk's blocks over the processes (large trunks), the rest replicated.
    parallel: str = ranged("ddp", choices=PARALLEL)


# --- data ---------------------------------------------------------------------------------
def dataset_limits(limit: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    """One episode limit per dataset from ``episodes_per_dataset`` (one for all, or one each)."""
    if limit is None or isinstance(limit, int):
        return [limit] * n
    if len(limit) != n:
        raise VlarlError(f"episodes_per_dataset: {len(limit)} limits for {n} datasets")
    return list(limit)


class SFTData:
    """Every (observation, action chunk, instruction) of the datasets, in memory as tensors
    (images stay uint8)."""

    def __init__(self, paths: list[str], chunk: int, episodes_per_dataset: int | None | Sequence[int | None] = None,
                 skip_bad: bool = False) -> None:
        """``episodes_per_dataset``: the first N episodes of each dataset (all when None), or
        one such limit per path. ``skip_bad``: damaged episodes among them are left out (not
        replaced), each named in ``skipped``, instead of stopping."""
        limits = dataset_limits(episodes_per_dataset, len(paths))
        images: dict[str, list[np.ndarray]] = {}
        states, actions, instr = [], [], []
        self.instructions: list[str] = []
        self.tasks: dict[str, dict[str, Any]] = {}  # instruction -> env name and options
        self.skipped: list[str] = []
        cameras: list[str] | None = None
        first: tuple[str, dict[str, Any]] = ("", {})
        for path, limit in zip(paths, limits):
            data = EpisodeDataset(path)
            shapes = {k: v["shape"] for k, v in data.info["features"].items()
                      if k.startswith("observation.") or k == "action"}
            if cameras is None:
                cameras, first = data.cameras, (path, shapes)
            elif data.cameras != cameras:
                raise VlarlError(f"{path}: cameras {data.cameras} differ from the first dataset's {cameras}")
            elif shapes != first[1]:  # one policy learns from them all: the same observations and actions
                diff = sorted(k for k in shapes.keys() | first[1].keys() if shapes.get(k) != first[1].get(k))
                raise VlarlError(f"{path}: shapes differ from {first[0]}'s: " + "; ".join(
                    f"{k} {shapes.get(k)} vs {first[1].get(k)}" for k in diff))
            for i, ep in data.readable(skip_bad, range(len(data.episodes[:limit]))):
                meta = data.episodes[i]
                t = meta.length
                if meta.instruction not in self.instructions:
                    self.instructions.append(meta.instruction)
                    self.tasks[meta.instruction] = {"env": meta.extra.get("env"), "options": meta.extra.get("env_options", {})}
                for cam in cameras:
                    images.setdefault(cam, []).append(ep[f"observation.images.{cam}"][:t])
                states.append(ep["observation.state"][:t])
                # chunk k: actions t .. t+k-1, the last action repeated past the episode's end
                a = ep["action"]
                idx = np.minimum(np.arange(t)[:, None] + np.arange(chunk)[None], t - 1)
                actions.append(a[idx])
                instr.append(np.full(t, self.instructions.index(meta.instruction)))
            self.skipped += data.skipped
        if not states:
            raise VlarlError(f"no episodes in {paths}")
        if not cameras:
            raise VlarlError(f"{paths[0]}: the datasets hold no images; SFT of a VLA policy needs pixels")
        self.cameras = cameras
        self.images = {c: torch.from_numpy(np.concatenate(v)) for c, v in images.items()}
        self.state = torch.from_numpy(np.concatenate(states)).float()
        self.actions = torch.from_numpy(np.concatenate(actions)).float()
        self.instr = torch.from_numpy(np.concatenate(instr)).long()
        self.image_size = self.images[cameras[0]].shape[1]
        self.state_dim, self.action_dim = self.state.shape[1], self.actions.shape[2]

    def __len__(self) -> int:
        return len(self.state)


# --- training -----------------------------------------------------------------------------
@torch.no_grad()
def cache_tokens(policy: VLAPolicy, data: SFTData, device: torch.device, batch: int = 256) -> torch.Tensor:
    """Image tokens of every frame, computed once (float16)."""
    out = []
    for start in range(0, len(data), batch):
        pixels = {c: data.images[c][start : start + batch].to(device) for c in data.cameras}
        out.append(policy.encode_images(pixels).half())
    return torch.cat(out)


def policy_spec(policy: VLAPolicy, data: SFTData) -> dict[str, Any]:
    """What rebuilding the policy needs, without the data (saved as policy.json)."""
    return {"policy": asdict(policy.cfg), "cameras": policy.cameras, "image_size": policy.image_size,
            "state_dim": policy.state_dim, "action_dim": policy.action_dim, "tasks": data.tasks}


def build_policy(spec: dict[str, Any]) -> VLAPolicy:
    return VLAPolicy(PolicyConfig(**spec["policy"]), spec["cameras"], spec["image_size"], spec["state_dim"], spec["action_dim"])


def stage0(cfg: Any, run: Run, progress: bool) -> tuple[Path, dict[str, Any] | None]:
    """The SFT run a post-training recipe starts from: ``cfg.sft_run`` when given, else an SFT
    run of ``cfg.sft`` trained (or resumed) in ``run``'s ``sft`` folder. ``cfg`` is any recipe
    config with ``sft``, ``sft_run``, ``seed``, ``device``, ``eval_episodes`` and ``eval_envs``."""
    if cfg.sft_run:
        done = Path(cfg.sft_run) / "results.json"
        return Path(cfg.sft_run), json.loads(done.read_text()) if done.exists() else None
    sft_dir = run.path / "sft"
    sft_cfg = replace(cfg.sft, run_dir=str(sft_dir), seed=cfg.seed, device=cfg.device,
                      eval_episodes=cfg.eval_episodes, eval_envs=cfg.eval_envs)
    return sft_dir, finish_stage(train_sft, SFTConfig, sft_cfg, progress)


def load_sft_policy(sft_dir: Path, device: torch.device) -> tuple[VLAPolicy, dict[str, Any]]:
    """The policy of a finished SFT run (its latest checkpoint) and its spec (policy.json)."""
    ckpt = latest_checkpoint(sft_dir / "checkpoints")
    if ckpt is None or not (sft_dir / "policy.json").exists():
        raise VlarlError(f"sft_run: {sft_dir} is not a finished SFT run (no policy.json or checkpoint)")
    spec = json.loads((sft_dir / "policy.json").read_text())
    policy = build_policy(spec).to(device)
    load_checkpoint(ckpt, {"policy": policy}, restore_rng=False)
    return policy, spec


def train_sft(cfg: SFTConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    from vlarl.models.language import InstructionEncoder
    from vlarl.runtime import distributed

    check_ranges(cfg)  # a config built in Python; a resumed one was checked when it was loaded
    cfg, ctx = distributed.init_for(cfg, resume)  # under torchrun: one process per device
    if resume is not None and (done := resume.finished(cfg.steps)) is not None:
        return done if ctx.is_main else {"follower": True, "rank": ctx.rank, "steps": done.get("steps")}
    device = ctx.device
    distributed.require_divisible(cfg.batch_size, ctx, "batch_size")
    fsdp = ctx.enabled and cfg.parallel == "fsdp"
    run, cfg, progress = distributed.start_run(cfg, resume, ctx, progress)
    rng = seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = SFTData(cfg.datasets, cfg.policy.chunk, cfg.episodes_per_dataset, cfg.skip_bad_episodes)
    lang = InstructionEncoder()
    lang_table = lang(data.instructions).to(device)
    policy = VLAPolicy(cfg.policy, data.cameras, data.image_size, data.state_dim, data.action_dim).to(device)
    if ctx.is_main:
        atomic_write_text(run.path / "policy.json", json.dumps(policy_spec(policy, data), indent=2))

    def make_opt() -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)

    # FSDP: weights load into the whole module before it is sharded; the optimiser state (saved
    # whole, keyed by parameter name) waits for the sharded optimiser.
    saved_opt = distributed.SavedOptimizer()
    opt = None if fsdp else make_opt()
    counters = run.restore({"policy": policy}, {"opt": saved_opt if opt is None else opt}, {"rng": rng})
    if counters is None and cfg.init_run:  # a new run fine-tuning a trained generalist
        _load_init(policy, cfg.init_run, policy_spec(policy, data), device)
    distributed.broadcast_module(policy, ctx)
    counters = counters or {"step": 0, "train_seconds": 0.0}
    if "shift_rng" in counters:
        gen.set_state(counters["shift_rng"])
    cached = cfg.cache_features and policy.encoder_frozen
    cache = cache_tokens(policy, data, device) if cached else None
    whole = policy  # what rank 0 checkpoints and evaluates
    if fsdp:
        whole = copy.deepcopy(policy) if ctx.is_main else policy  # rank 0's unsharded copy, refreshed from the shards
        distributed.fully_shard_modules([policy.encoder, *policy.trunk.blocks], ctx)
        opt = make_opt()
        if saved_opt.state is not None:
            distributed.load_full_optimizer_state(policy, opt, saved_opt.state)
    assert opt is not None
    synced = distributed.replicated(policy.parameters()) if fsdp else list(policy.parameters())

    def refresh_whole() -> dict[str, Any] | None:
        """FSDP (every process): the shards gathered into rank 0's whole copy; returns the whole
        optimiser state to checkpoint."""
        if not fsdp:
            return None
        assert opt is not None
        weights, optim = distributed.full_state(policy, opt)
        if ctx.is_main:
            whole.load_state_dict(weights)
        return optim
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    state, actions, instr = data.state.to(device), data.actions.to(device), data.instr.to(device)

    def batch_tokens(idx: torch.Tensor, use_cache: bool) -> torch.Tensor:
        if use_cache:
            assert cache is not None
            return cache[idx.to(device)]
        pixels = {c: data.images[c][idx] for c in data.cameras}
        if cfg.augment:
            pixels = {c: random_shift(v, 4, gen) for c, v in pixels.items()}
        return policy.encode_images({c: v.to(device) for c, v in pixels.items()})

    def train_step(idx: torch.Tensor, use_cache: bool, update: bool = True) -> torch.Tensor:
        with autocast:
            loss = bc_loss(policy, batch_tokens(idx, use_cache), state[idx], lang_table[instr[idx]], actions[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if update:
            distributed.average_gradients(synced, ctx)  # each process held 1/N of the batch
            if fsdp:  # FSDP averaged its shards' gradients in the backward
                distributed.clip_grad_norm(policy.parameters(), 1.0, ctx)
            else:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
        return loss.detach()

    results: dict[str, Any] = {"cached_features": cached, "frames": len(data), "tasks": list(data.tasks)}
    if cfg.skip_bad_episodes:
        results["skipped_episodes"] = {"count": len(data.skipped), "episodes": data.skipped}
    if cfg.measure_cache_speedup and cached:
        results.update(_cache_speedup(train_step, len(data), cfg.batch_size, gen))
    policy.train()
    step = counters["step"]
    bar = tqdm(total=cfg.steps, initial=step, desc="sft", unit="step", disable=not progress)
    t_start, losses = time.perf_counter(), []
    while step < cfg.steps:
        idx = torch.from_numpy(rng.integers(0, len(data), cfg.batch_size))  # the same on every process
        losses.append(train_step(distributed.shard(idx, ctx), cached))
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            loss = torch.stack(losses).mean().item()
            losses.clear()
            run.log(step, loss=loss)
            bar.set_postfix(loss=f"{loss:.4f}")
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            refresh_whole()
            if ctx.is_main:
                _log_eval(run, step, evaluate_policy(whole, lang, data.tasks, cfg, run.path / f"eval_{step}"))
        if step % cfg.save_every == 0 or step == cfg.steps:
            counters = {"step": step, "train_seconds": counters["train_seconds"] + time.perf_counter() - t_start,
                        "shift_rng": gen.get_state()}
            t_start = time.perf_counter()
            optim = refresh_whole()
            run.save(step, {"policy": whole}, {"opt": opt if optim is None else distributed.SavedOptimizer(optim)},
                     counters, {"rng": rng})
    bar.close()
    if not ctx.is_main:
        distributed.barrier(ctx)  # rank 0 evaluates and writes the results
        return {"follower": True, "rank": ctx.rank, "steps": step}
    final = evaluate_policy(whole, lang, data.tasks, cfg, run.path / "eval", videos=cfg.video_episodes)
    _log_eval(run, step, final)
    results.update(_summary(final), train_seconds=counters["train_seconds"], steps=step, resumed_from=run.resumed_step)
    run.write_results(results)
    from vlarl.eval.evaluate import results_table

    atomic_write_text(run.path / "eval.md", results_table(final, f"SFT policy ({run.path})"))
    from vlarl.eval.plots import plot_training

    plot_training(run.path)
    run.close()
    distributed.barrier(ctx)
    return results


def _load_init(policy: VLAPolicy, init_run: str, spec: dict[str, Any], device: torch.device) -> None:
    """Copy the weights of a finished SFT run into ``policy``; the two must be the same model."""
    trained, trained_spec = load_sft_policy(Path(init_run), device)
    spec = json.loads(json.dumps(spec))  # tuples as lists, as the saved spec holds them
    for key in ("policy", "cameras", "image_size", "state_dim", "action_dim"):
        if trained_spec[key] != spec[key]:
            raise VlarlError(f"init_run: {init_run} has {key} {trained_spec[key]!r}; this run's data and config "
                             f"give {spec[key]!r}")
    policy.load_state_dict(trained.state_dict())


def _cache_speedup(train_step, n: int, batch: int, gen: torch.Generator, steps: int = 8) -> dict[str, float]:
    """SFT samples/s with cached tokens over live encoding, on the same batches, no update."""
    batches = [torch.randint(0, n, (batch,), generator=gen) for _ in range(steps)]
    rates = {}
    for use_cache in (True, False):
        train_step(batches[0], use_cache, update=False)  # warm-up
        t0 = time.perf_counter()
        for idx in batches:
            train_step(idx, use_cache, update=False)
        rates[use_cache] = steps * batch / (time.perf_counter() - t0)
    return {"samples_per_s_cached": rates[True], "samples_per_s_uncached": rates[False],
            "cached_speedup": rates[True] / rates[False]}


def evaluate_policy(policy: VLAPolicy, lang, tasks: dict[str, dict[str, Any]], cfg: SFTConfig, out_dir: Path,
                    videos: int = 0, twin: Any = None) -> dict[str, dict[str, Any]]:
    """Success of ``policy`` on every task's env (``tasks`` from the datasets' metadata)."""
    from vlarl.eval.evaluate import evaluate

    was_training = policy.training
    policy.eval()
    results = {}
    for instruction, task in tasks.items():
        if not task.get("env"):
            continue
        options = dict(task.get("options", {}))
        if cfg.eval_episode_length:
            options["episode_length"] = cfg.eval_episode_length
        if twin is not None:
            options["twin"] = twin
        emb = lang([instruction])

        def act(obs, _instructions, emb=emb):
            return policy.act(obs, emb.expand(len(obs["state"]), -1))

        video = out_dir / f"{task['env'].replace('/', '_')}.mp4" if videos else None
        results[task["env"]] = evaluate(act, task["env"], cfg.eval_episodes, cfg.eval_envs, seed=10_000 + cfg.seed,
                                        env_options=options, video_path=video, video_episodes=videos)
    policy.train(was_training)
    return results


def _summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    per_task = {e: {k: r[k] for k in ("success_rate", "ci95", "mean_length", "episodes") if k in r} | (
        {"video": r["video"]} if "video" in r else {}) for e, r in results.items()}
    rates = [r["success_rate"] for r in results.values()]
    return {"mean_success": float(np.mean(rates)) if rates else None, "per_task": per_task}


def _log_eval(run: Run, step: int, results: dict[str, dict[str, Any]]) -> None:
    if results:
        run.log(step, mean_success=float(np.mean([r["success_rate"] for r in results.values()])),
                **{f"success/{e}": r["success_rate"] for e, r in results.items()})
