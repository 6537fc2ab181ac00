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
from vlarl.data.episodes import EpisodeDataset, env_features
from vlarl.data.replay import ReplayBuffer, sample_mixed
from vlarl.recipes.collect import EnvConfig
from vlarl.runtime import Run, seed_everything
from vlarl.runtime.config import check_ranges, ranged


@dataclass
class RLPDConfig:
    env: EnvConfig = field(default_factory=lambda: EnvConfig(name="toy/reach", obs_mode="state"))
    sac: SACConfig = field(default_factory=SACConfig)
    demos: str | None = None  # a vlarl dataset of the same env
    demos_env_check: bool = True  # false: accept demos recorded on another env (same shapes), deliberately
    skip_bad_episodes: bool = False  # leave damaged demo episodes out (named and counted) instead of stopping
    demos_in_online_buffer: bool = False  # the "SAC + demos" baseline
    steps: int = ranged(20_000, ge=1)  # env steps
    random_steps: int = ranged(1_000, ge=0)  # uniform random actions first (no demos: exploration)
    buffer_size: int = ranged(1_000_000, ge=2)
    store_frames: bool = False  # with cached features (a frozen encoder), keep the uint8 frames in the buffers too
    eval_every: int = ranged(5_000, ge=0)  # 0: no evaluation
    eval_episodes: int = ranged(10, ge=1)
    eval_envs: int = ranged(2, ge=1)
    save_every: int = ranged(5_000, ge=1)
    save_buffer: bool = True
    log_every: int = ranged(500, ge=1)
    seed: int = ranged(0, ge=0)
    run_dir: str = "runs/rlpd"
    device: str = "auto"


def _obs_to_torch(obs: dict[str, Any], device: torch.device, add_batch_dim: bool = False) -> dict[str, Any]:
    def t(x, dtype=None):
        x = torch.as_tensor(np.asarray(x, dtype), device=device)
        return x[None] if add_batch_dim else x

    out: dict[str, Any] = {"state": t(obs["state"], np.float32)}
    if "pixels" in obs:
        out["pixels"] = {c: t(v) for c, v in obs["pixels"].items()}
    if "features" in obs:  # a frozen encoder's tokens, already computed (EncodeFrames)
        out["features"] = {c: t(v) for c, v in obs["features"].items()}
    return out


def train_rlpd(cfg: RLPDConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    from vlarl.envs import make
    from vlarl.envs.spaces import env_dims
    from vlarl.eval.evaluate import evaluate
    from vlarl.runtime import distributed

    check_ranges(cfg)  # a config built in Python; a resumed one was checked when it was loaded
    cfg, ctx = distributed.init_for(cfg, resume)  # under torchrun: one process per device
    if resume is not None and (done := resume.finished(cfg.steps)) is not None:
        return done if ctx.is_main else {"follower": True, "rank": ctx.rank}
    device = ctx.device
    distributed.require_divisible(cfg.sac.batch_size, ctx, "sac.batch_size")
    rng = seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    env = make(cfg.env.name, **cfg.env.kwargs())
    state_dim, action_dim, cameras = env_dims(env)
    demos = open_demos(cfg.demos, cfg, env_features(state_dim, action_dim, cameras)) if cfg.demos else None
    run, cfg, progress = distributed.start_run(cfg, resume, ctx, progress)  # after every check
    agent = SACAgent(cfg.sac, state_dim, action_dim, cameras).to(device)
    learner = SACLearner(agent)
    if not ctx.is_main:  # a follower: rank 0 steps the env and holds the buffers
        env.close()
        return distributed.follow_updates(run, agent, learner, ctx)
    # a frozen encoder: each frame encoded once as it arrives, its tokens stored (frames only if asked)
    encoder = agent.critic.pixels.frame_encoder() if agent.critic.pixels is not None else None
    tokens = encoder.shapes if encoder is not None else None
    frames = cameras if encoder is None or cfg.store_frames else None
    if encoder is not None:
        from vlarl.envs.wrappers import EncodeFrames

        env = EncodeFrames(env, encoder, keep_frames=cfg.store_frames)
    online = ReplayBuffer(cfg.buffer_size, state_dim, action_dim, frames, seed=cfg.seed, features=tokens)
    offline = None
    if demos is not None:
        demo_buffer = ReplayBuffer.from_dataset(demos, seed=cfg.seed + 1, skip_bad=cfg.skip_bad_episodes,
                                                frame_encoder=encoder, keep_frames=frames is not None)
        if cfg.demos_in_online_buffer:
            _copy_buffer(demo_buffer, online)
        else:
            offline = demo_buffer
    ratio = cfg.sac.offline_ratio if offline is not None else 0.0
    counters = (run.restore({"agent": agent}, learner.optimizers(), {"rng": rng, "gen": gen})
                or {"step": 0, "episodes": 0})
    distributed.broadcast_module(agent, ctx)
    learner = distributed.shard_learner(learner, ctx)
    step, episodes = counters["step"], counters["episodes"]
    ep_return, ep_len, ep_success = 0.0, 0, False
    if "buffer" in counters:  # the episode in progress at the checkpoint goes on where it was
        online.load_state_dict(counters.pop("buffer"))
        obs, ep_return, ep_len, ep_success = _replay_open_episode(env, cfg.seed + episodes, online, counters["ep_len"])
    else:
        obs, _ = env.reset(seed=cfg.seed + episodes)
        online.start_episode(obs)
    results: dict[str, Any] = {"evals": counters.pop("evals", [])}  # those before the checkpoint, on resume
    if demos is not None and cfg.skip_bad_episodes:
        results["skipped_episodes"] = {"count": len(demos.skipped), "episodes": demos.skipped}
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
                info_u = learner.update(to_torch(sample, device, cfg.sac.augment and cameras is not None, gen,
                                                 cfg.sac.feature_shift))
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
                saved = {"step": step, "episodes": episodes, "evals": results["evals"], "ep_len": ep_len}
                if cfg.save_buffer:
                    saved["buffer"] = online.state_dict()
                run.save(step, {"agent": agent}, learner.optimizers(), saved, {"rng": rng, "gen": gen})
        if ctx.enabled:  # every process must end with rank 0's weights
            results["replica_gap"] = learner.replica_gap()
    finally:
        if ctx.enabled:
            learner.stop()
    bar.close()
    env.close()
    results.update(steps=step, episodes=episodes, seconds=time.perf_counter() - t0, buffer_frames=online.frames,
                   bytes_per_transition=online.bytes_per_frame,
                   resumed_from=run.resumed_step,
                   final_success=results["evals"][-1]["success"] if results["evals"] else None)
    run.write_results(results)
    run.close()
    return results


def open_demos(path: str, cfg: RLPDConfig, features: dict[str, list[int]]) -> EpisodeDataset:
    """The demos dataset at ``path``, checked against the run's env: the same observation and
    action shapes and (unless ``cfg.demos_env_check`` is false) recorded on ``cfg.env.name``."""
    data = EpisodeDataset(path)
    data.check_matches(cfg.env.name, features, "demos", "demos_env_check=false", check_env=cfg.demos_env_check)
    return data


def _replay_open_episode(env: Any, seed: int, buf: ReplayBuffer, steps: int) -> tuple[dict[str, Any], float, int, bool]:
    """After a resume: the env is reset with the seed of the episode in progress at the
    checkpoint and stepped through that episode's first ``steps`` actions from the buffer
    (nothing added, no random number drawn), so the run goes on exactly as an uninterrupted
    one would. Returns (obs, return, length, success) so far. An env that does not retrace the
    buffered states starts the episode over instead, and says so."""
    def same(obs: dict[str, Any], k: int) -> bool:  # as the buffer stored it (float32)
        return np.array_equal(np.asarray(obs["state"], buf.state.dtype), buf.state[k % buf.capacity])

    obs, _ = env.reset(seed=seed)
    total, success = 0.0, False
    slot = buf.ptr - 1 - steps  # the episode's first frame
    retraced = same(obs, slot)
    for i in range(steps if retraced else 0):
        obs, reward, terminated, truncated, info = env.step(buf.action[(slot + i) % buf.capacity])
        total, success = total + float(reward), success or bool(info["is_success"])
        retraced = same(obs, slot + i + 1) and not (terminated or truncated)
        if not retraced:
            break
    if retraced:
        return obs, total, steps, success
    print(f"rlpd: the env did not retrace the {steps} steps of the episode in progress at the checkpoint; "
          "it starts over, so this run no longer matches an uninterrupted one", flush=True)
    obs, _ = env.reset(seed=seed)
    buf.start_episode(obs)
    return obs, 0.0, 0, False


def _copy_buffer(src: ReplayBuffer, dst: ReplayBuffer) -> None:
    """Append ``src``'s frames and transitions to ``dst`` in order (for SAC + demos)."""
    n = min(src.frames, src.capacity)
    for k in range(n):
        obs = {"state": src.state[k], "pixels": {c: v[k] for c, v in src.pixels.items()},
               "features": {c: v[k] for c, v in src.features.items()}}
        if k == 0 or not src.valid[k - 1]:
            dst.start_episode(obs)
        else:
            j = k - 1
            dst.add(src.action[j], float(src.reward[j]), obs, bool(src.terminated[j]), truncated=not src.valid[k])
