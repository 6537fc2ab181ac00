"""Online RL with offline data (RLPD), and its baselines, on any vlarl env.

    rlpd       demos in an offline buffer, each minibatch ``offline_ratio`` offline
    sac        no demos (``demos: null``)
    sac_demos  demos copied into the online buffer, ``offline_ratio: 0``

The loop is the off-policy runtime's (runtime/offpolicy.py) with one env in this process,
each step stored as it happens: act (random for ``random_steps`` without demos), store, and
after the warm-up ``sac.utd`` critic steps and one actor step per env step; evaluate, log
and checkpoint (the replay buffer too) on schedule. A resumed run restores weights,
optimisers, RNG, counters and the online buffer, and retraces the episode that was open.

Under ``torchrun --nproc_per_node N`` the update is spread over N processes (devices):
rank 0 steps the env, holds the buffers and draws each minibatch as one process would;
every process computes the losses on its 1/N slice (runtime/distributed.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlarl.algos.sac import SACAgent, SACConfig, SACLearner, obs_to_torch, to_torch
from vlarl.data.episodes import EpisodeDataset, env_features
from vlarl.data.mixing import MixedReplay
from vlarl.data.replay import ReplayBuffer
from vlarl.envs.wrappers import EncodeFrames
from vlarl.recipes.collect import EnvConfig
from vlarl.runtime import Run, seed_everything
from vlarl.runtime.actor import ActorParts
from vlarl.runtime.config import check_ranges, ranged
from vlarl.runtime.offpolicy import OffPolicyLoop, Schedule
from vlarl.runtime.sources import LocalSource


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


def train_rlpd(cfg: RLPDConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    from vlarl.envs import make
    from vlarl.envs.spaces import env_dims
    from vlarl.eval.evaluate import evaluate
    from vlarl.runtime import distributed

    check_ranges(cfg)  # a config built in Python; a resumed one was checked when it was loaded
    cfg, ctx = distributed.init_for(cfg, resume)  # under torchrun: one process per device
    if resume is not None and (done := resume.finished(cfg.steps, "final_success")) is not None:
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
        env = EncodeFrames(env, encoder, keep_frames=cfg.store_frames)
    online = ReplayBuffer(cfg.buffer_size, state_dim, action_dim, frames, seed=cfg.seed, features=tokens)
    offline = None
    if demos is not None:
        offline = ReplayBuffer.from_dataset(demos, seed=cfg.seed + 1, skip_bad=cfg.skip_bad_episodes,
                                            frame_encoder=encoder, keep_frames=frames is not None)
        if cfg.demos_in_online_buffer:
            _copy_buffer(offline, online)
            offline = None

    def evaluate_policy(episodes: int, seed: int, _video: Any) -> dict[str, Any]:
        def act(o, _instr):
            return agent.act(obs_to_torch(o, device), deterministic=True).cpu().numpy()

        r = evaluate(act, cfg.env.name, episodes, cfg.eval_envs, seed=seed, env_options=cfg.env.kwargs(), progress=False)
        return {"success": r["success_rate"], "ci95": r["ci95"], "mean_length": r["mean_length"],
                "mean_return": r["mean_return"]}

    loop = OffPolicyLoop(
        run, "rlpd", agent, learner, MixedReplay(online, offline, cfg.sac.batch_size, cfg.sac.offline_ratio),
        _schedule(cfg), lambda sample: to_torch(sample, device, cfg.sac.augment and cameras is not None, gen,
                                                cfg.sac.feature_shift),
        evaluate_policy, {"rng": rng, "gen": gen}, progress=progress)
    loop.restore()
    distributed.broadcast_module(agent, ctx)
    loop.learner = learner = distributed.shard_learner(learner, ctx)  # under torchrun: each update over every process
    explore = None  # uniform random actions first, where no demos show the way
    if demos is None and not cfg.demos_in_online_buffer:
        def explore() -> np.ndarray:
            return rng.uniform(-1, 1, action_dim).astype(np.float32)

    def act(obs: dict[str, Any]) -> np.ndarray:
        return agent.act(obs_to_torch(obs, device, add_batch_dim=True))[0].cpu().numpy()

    source = LocalSource(ActorParts(env=env, act=act, load=lambda _payload: None, seed=cfg.seed), loop.replay,
                         whole_episodes=False, random_action=explore, random_steps=cfg.random_steps,
                         state=loop.source_state)
    try:
        results = loop.train(source)
        if ctx.enabled:  # every process must end with rank 0's weights
            results["replica_gap"] = learner.replica_gap()
    finally:
        if ctx.enabled:
            learner.stop()
    results.update(steps=results["env_steps"], buffer_frames=online.frames)
    if demos is not None and cfg.skip_bad_episodes:
        results["skipped_episodes"] = {"count": len(demos.skipped), "episodes": demos.skipped}
    run.write_results(results)
    run.close()
    return results


def _schedule(cfg: RLPDConfig) -> Schedule:
    """RLPD's: ``random_steps`` first, then ``sac.utd`` critic steps and one actor step per env step."""
    return Schedule(steps=cfg.steps, utd=cfg.sac.utd, actor_every=cfg.sac.critic_steps_per_actor_step(),
                    warmup_steps=min(cfg.random_steps, cfg.steps), eval_every=cfg.eval_every,
                    eval_episodes=cfg.eval_episodes, final_eval=cfg.eval_every > 0,
                    final_eval_episodes=cfg.eval_episodes, eval_seed=10_000 + cfg.seed,
                    final_eval_seed=10_000 + cfg.seed, save_every=cfg.save_every, save_buffer=cfg.save_buffer,
                    log_every=cfg.log_every)


def open_demos(path: str, cfg: RLPDConfig, features: dict[str, list[int]]) -> EpisodeDataset:
    """The demos dataset at ``path``, checked against the run's env: the same observation and
    action shapes and (unless ``cfg.demos_env_check`` is false) recorded on ``cfg.env.name``."""
    data = EpisodeDataset(path)
    data.check_matches(cfg.env.name, features, "demos", "demos_env_check=false", check_env=cfg.demos_env_check)
    return data


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
