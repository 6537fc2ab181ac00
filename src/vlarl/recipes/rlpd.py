"""Online RL with offline data (RLPD), and its baselines, on any vlarl env.

    rlpd       demos in an offline buffer, each minibatch ``offline_ratio`` offline
    sac        no demos (``demos: null``)
    sac_demos  demos copied into the online buffer, ``offline_ratio: 0``

The loop: act (random for ``random_steps``), store, and once the buffers hold a batch run
one SAC update (``utd`` critic steps + one actor step) per env step; evaluate, log and
checkpoint (the replay buffer too) on schedule. A resumed run restores weights, optimisers,
RNG, counters and the online buffer; the episode that was running when it stopped is lost.

Under ``torchrun --nproc_per_node N`` the update is spread over N processes (devices):
rank 0 steps the env, holds the buffers and draws each minibatch as one process would;
every process computes the losses on its 1/N slice (runtime/distributed.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vlarl.algos.sac import SACAgent, SACConfig, SACLearner, to_torch
from vlarl.data.replay import ReplayBuffer, sample_mixed
from vlarl.errors import VlarlError
from vlarl.recipes.collect import EnvConfig
from vlarl.runtime import Run, seed_everything


@dataclass
class RLPDConfig:
    env: EnvConfig = field(default_factory=lambda: EnvConfig(name="toy/reach", obs_mode="state"))
    sac: SACConfig = field(default_factory=SACConfig)
    demos: str | None = None  # a vlarl dataset of the same env
    demos_in_online_buffer: bool = False  # the "SAC + demos" baseline
    steps: int = 20_000  # env steps
    random_steps: int = 1_000  # uniform random actions first (no demos: exploration)
    buffer_size: int = 1_000_000
    eval_every: int = 5_000
    eval_episodes: int = 10
    eval_envs: int = 2
    save_every: int = 5_000
    save_buffer: bool = True
    log_every: int = 500
    seed: int = 0
    run_dir: str = "runs/rlpd"
    device: str = "auto"


def _obs_to_torch(obs: dict[str, Any], device: torch.device, add_batch_dim: bool = False) -> dict[str, Any]:
    def t(x, dtype=None):
        x = torch.as_tensor(np.asarray(x, dtype), device=device)
        return x[None] if add_batch_dim else x

    out: dict[str, Any] = {"state": t(obs["state"], np.float32)}
    if "pixels" in obs:
        out["pixels"] = {c: t(v) for c, v in obs["pixels"].items()}
    return out


def train_rlpd(cfg: RLPDConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    from vlarl.envs import make
    from vlarl.envs.spaces import env_dims
    from vlarl.eval.evaluate import evaluate
    from vlarl.runtime import distributed

    cfg, ctx = distributed.init_for(cfg, resume)  # under torchrun: one process per device
    device = ctx.device
    distributed.require_divisible(cfg.sac.batch_size, ctx, "sac.batch_size")
    run, cfg, progress = distributed.start_run(cfg, resume, ctx, progress)
    rng = seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    env = make(cfg.env.name, **cfg.env.kwargs())
    state_dim, action_dim, cameras = env_dims(env)
    agent = SACAgent(cfg.sac, state_dim, action_dim, cameras).to(device)
    learner = SACLearner(agent)
    if not ctx.is_main:  # a follower: rank 0 steps the env and holds the buffers
        env.close()
        return distributed.follow_updates(run, agent, learner, ctx)
    online = ReplayBuffer(cfg.buffer_size, state_dim, action_dim, cameras, seed=cfg.seed)
    offline = None
    if cfg.demos:
        demo_buffer = ReplayBuffer.from_dataset(cfg.demos, seed=cfg.seed + 1)
        if demo_buffer.state.shape[1] != state_dim or demo_buffer.cameras != (cameras or {}):
            raise VlarlError(f"{cfg.demos}: demos have state {demo_buffer.state.shape[1]} and cameras "
                             f"{demo_buffer.cameras}; the env gives {state_dim} and {cameras or {}}")
        if cfg.demos_in_online_buffer:
            _copy_buffer(demo_buffer, online)
        else:
            offline = demo_buffer
    ratio = cfg.sac.offline_ratio if offline is not None else 0.0
    counters = run.restore({"agent": agent}, learner.optimizers(), {"rng": rng}) or {"step": 0, "episodes": 0}
    distributed.broadcast_module(agent, ctx)
    learner = distributed.shard_learner(learner, ctx)
    if "buffer" in counters:
        online.load_state_dict(counters.pop("buffer"))
    obs, _ = env.reset(seed=cfg.seed + counters["episodes"])
    online.start_episode(obs)
    step, episodes = counters["step"], counters["episodes"]
    ep_return, ep_len, ep_success = 0.0, 0, False
    results: dict[str, Any] = {"evals": []}
    bar = tqdm(total=cfg.steps, initial=step, desc=f"rlpd {cfg.env.name}", unit="step", disable=not progress)
    t0 = time.perf_counter()
    try:
        while step < cfg.steps:
            if step < cfg.random_steps and offline is None and not cfg.demos_in_online_buffer:
                action = rng.uniform(-1, 1, action_dim).astype(np.float32)
            else:
                action = agent.act(_obs_to_torch(obs, device, add_batch_dim=True))[0].cpu().numpy()
            next_obs, reward, terminated, truncated, info = env.step(action)
            online.add(action, float(reward), next_obs, terminated, truncated)
            ep_return, ep_len, ep_success = ep_return + float(reward), ep_len + 1, ep_success or info["is_success"]
            obs = next_obs
            step += 1
            if terminated or truncated:
                episodes += 1
                run.log(step, episode_return=ep_return, episode_length=ep_len, episode_success=float(ep_success))
                obs, _ = env.reset(seed=cfg.seed + episodes)
                online.start_episode(obs)
                ep_return, ep_len, ep_success = 0.0, 0, False
            if len(online) >= cfg.sac.batch_size and step >= min(cfg.random_steps, cfg.steps):
                sample = sample_mixed(online, offline, cfg.sac.batch_size, cfg.sac.utd, ratio)
                info_u = learner.update(to_torch(sample, device, cfg.sac.augment and cameras is not None, gen))
                if step % cfg.log_every == 0:
                    run.log(step, **{k: float(v) for k, v in info_u.items()})
            bar.update(1)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                def act(o, _instr):
                    return agent.act(_obs_to_torch(o, device), deterministic=True).cpu().numpy()

                r = evaluate(act, cfg.env.name, cfg.eval_episodes, cfg.eval_envs, seed=10_000 + cfg.seed,
                             env_options=cfg.env.kwargs(), progress=False)
                run.log(step, eval_success=r["success_rate"], eval_return=r["mean_return"])
                results["evals"].append({"step": step, "success": r["success_rate"], "ci95": r["ci95"],
                                         "mean_length": r["mean_length"], "mean_return": r["mean_return"]})
                bar.set_postfix(success=f"{r['success_rate']:.2f}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                saved = {"step": step, "episodes": episodes}
                if cfg.save_buffer:
                    saved["buffer"] = online.state_dict()
                run.save(step, {"agent": agent}, learner.optimizers(), saved, {"rng": rng})
        if ctx.enabled:  # every process must end with rank 0's weights
            results["replica_gap"] = learner.replica_gap()
    finally:
        if ctx.enabled:
            learner.stop()
    bar.close()
    env.close()
    results.update(steps=step, episodes=episodes, seconds=time.perf_counter() - t0, buffer_frames=online.frames,
                   resumed_from=run.resumed_step,
                   final_success=results["evals"][-1]["success"] if results["evals"] else None)
    run.write_results(results)
    run.close()
    return results


def _copy_buffer(src: ReplayBuffer, dst: ReplayBuffer) -> None:
    """Append ``src``'s frames and transitions to ``dst`` in order (for SAC + demos)."""
    n = min(src.frames, src.capacity)
    for k in range(n):
        obs = {"state": src.state[k], "pixels": {c: v[k] for c, v in src.pixels.items()}}
        if k == 0 or not src.valid[k - 1]:
            dst.start_episode(obs)
        else:
            j = k - 1
            dst.add(src.action[j], float(src.reward[j]), obs, bool(src.terminated[j]), truncated=not src.valid[k])
