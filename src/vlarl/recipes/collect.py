"""Collect scripted-expert episodes into a dataset, in parallel worker processes.

Episode i is always reset with seed ``seed + i`` and its expert noise drawn from the same
seed, so a dataset is the same whatever the number of workers, and a collection stopped
part-way continues where it stopped when run again on the same directory.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.util
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlarl.data import EpisodeWriter
from vlarl.data.episodes import SOURCES
from vlarl.envs.spaces import OBS_MODES
from vlarl.ranges import check_ranges, ranged

POLICIES = ("scripted", "random")


@dataclass
class EnvConfig:
    """An env by name and its options; ``None`` keeps the env's own default."""

    name: str = "metaworld/drawer-open"
    obs_mode: str = ranged("pixels", choices=OBS_MODES)
    image_size: int | None = ranged(None, ge=1)
    cameras: list[str] | None = None
    episode_length: int | None = ranged(None, ge=1)
    options: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        out = {k: v for k, v in (("image_size", self.image_size), ("cameras", self.cameras),
                                 ("episode_length", self.episode_length)) if v is not None}
        return {"obs_mode": self.obs_mode, **out, **self.options}


@dataclass
class CollectConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: str = ranged("scripted", choices=POLICIES)  # or "random" (uniform actions)
    episodes: int = ranged(10, ge=1)  # in the dataset once done (those already there count)
    noise: float = ranged(0.0, ge=0)
    workers: int = ranged(1, ge=1)
    seed: int = ranged(0, ge=0)
    out: str = "data/demos"
    source: str = ranged("expert", choices=SOURCES)
    only_successful: bool = False


# --- worker side ----------------------------------------------------------------------------
_worker: dict[str, Any] = {}


class RandomActions:
    """Uniform random actions: failures and off-task states (negatives for a reward classifier)."""

    def __init__(self, env) -> None:
        import numpy as np

        self.shape = env.action_space.shape
        self.rng = np.random.default_rng(0)

    def __call__(self, obs=None):
        return self.rng.uniform(-1.0, 1.0, self.shape).astype("float32")


def _init_worker(env_name: str, env_kwargs: dict[str, Any], noise: float, policy: str = "scripted") -> None:
    from vlarl.envs import ScriptedExpert, make
    from vlarl.envs.base import vlarl_env

    env = make(env_name, **env_kwargs)
    # Close the env (and its rendering context) when the worker process exits.
    mp.util.Finalize(None, _close_worker, exitpriority=10)
    actor = ScriptedExpert(env, noise) if policy == "scripted" else RandomActions(env)
    _worker.update(env=env, expert=actor, task=vlarl_env(env).task, instruction=vlarl_env(env).instruction)


def _collect_one(seed: int):
    import numpy as np

    from vlarl.eval import run_episode

    expert = _worker["expert"]
    expert.rng = np.random.default_rng(seed)
    result = run_episode(_worker["env"], expert, seed=seed)
    return result, _worker["task"], _worker["instruction"]


def _close_worker() -> None:
    if "env" in _worker:
        _worker.pop("env").close()


# --- main side ------------------------------------------------------------------------------
def collect(cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Append ``cfg.episodes`` episodes to ``cfg.out`` (fewer if some are already there)."""
    check_ranges(cfg, "collect")
    from vlarl.envs import make  # check the env name and options up front, with a clear error

    make(cfg.env.name, **cfg.env.kwargs()).close()
    out = Path(cfg.out)
    with EpisodeWriter(out, fps=10.0) as writer:
        start = writer.num_episodes
        seeds = [cfg.seed + i for i in range(start, cfg.episodes)]
        kept = successes = 0
        bar = tqdm(total=len(seeds), desc=f"collect {cfg.env.name}", unit="ep", disable=not progress)
        for n, (seed, (result, task, instruction)) in enumerate(zip(seeds, _results(cfg, seeds)), 1):
            successes += result.success
            if result.success or not cfg.only_successful:
                writer.write_episode(result.arrays, task, instruction, cfg.source, result.success,
                                     seed=seed, noise=cfg.noise, env=cfg.env.name, env_options=cfg.env.kwargs())
                kept += 1
            bar.update(1)
            bar.set_postfix(success=f"{successes / n:.2f}")
        bar.close()
    return {"dataset": str(out), "collected": len(seeds), "written": kept, "successes": successes,
            "already_there": start}


def _results(cfg: CollectConfig, seeds: list[int]):
    if cfg.workers == 1 or len(seeds) <= 1:
        _init_worker(cfg.env.name, cfg.env.kwargs(), cfg.noise, cfg.policy)
        try:
            for s in seeds:
                yield _collect_one(s)
        finally:
            _close_worker()
        return
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(cfg.env.name, cfg.env.kwargs(), cfg.noise, cfg.policy)) as pool:
        # map keeps episode order, so the dataset does not depend on worker timing.
        yield from pool.map(_collect_one, seeds)
