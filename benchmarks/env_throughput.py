"""Pixel env throughput: MuJoCo's default render settings vs vlarl's, and 1 vs 2 workers.

    python benchmarks/env_throughput.py [--seconds 4] [--rounds 3] [--image-size 84]

All variants are measured side by side in one run, interleaved round by round, and the
median of the rounds is kept, so the ratios hold on a noisy machine. Variants per env:

- native:        the simulator package's own pixel path (Meta-World's ``env.render()``
                 through gymnasium's MujocoRenderer; gym-hil's ``image_obs=True``);
- vlarl_default: vlarl's env with ``fast_render=False`` (the model's own render settings:
                 shadows, multisampling);
- vlarl_fast:    vlarl's env as shipped (no shadows, no multisampling);
- workers_1 / workers_2: ``make_vec(name, n)`` with n = 1 or 2 processes (vlarl_fast),
                 total env steps per second.

Writes benchmarks/results/env_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")

import numpy as np

RESULTS = Path(__file__).parent / "results"
ENVS = ("metaworld/drawer-open", "panda/pick-cube")


class NativeMetaWorld:
    """Meta-World's own pixel path: render_mode='rgb_array' and env.render() per step."""

    def __init__(self, task: str, size: int) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        env = ALL_V3_ENVIRONMENTS[f"{task}-v3"](render_mode="rgb_array", camera_name="corner", width=size, height=size)
        env._partially_observable, env._freeze_rand_vec, env._set_task_called = False, False, True
        env.seeded_rand_vec = True
        env.seed(0)
        self.env = env

    def reset(self):
        self.env.reset()
        return self.env.render()

    def step(self, action):
        _, _, _, trunc, _ = self.env.step(action)
        return self.env.render(), trunc

    def close(self):
        self.env.close()


class NativePanda:
    """gym-hil's pick-cube with image_obs=True (its renderer, its scene settings)."""

    def __init__(self, size: int) -> None:
        from gym_hil.envs.panda_pick_gym_env import PandaPickCubeGymEnv
        from gym_hil.mujoco_gym_env import GymRenderingSpec

        self.env = PandaPickCubeGymEnv(image_obs=True, render_spec=GymRenderingSpec(height=size, width=size))
        self.t = 0

    def reset(self):
        self.t = 0
        return self.env.reset()[0]

    def step(self, action):
        a = np.concatenate([action[:3] * 0.025, np.zeros(3), action[3:]])
        obs, _, term, _, _ = self.env.step(a)
        self.t += 1
        return obs, term or self.t >= 100

    def close(self):
        self.env.close()


class Single:
    def __init__(self, name: str, size: int, fast: bool) -> None:
        from vlarl.envs import make

        self.env = make(name, obs_mode="pixels", image_size=size, fast_render=fast)

    def reset(self):
        return self.env.reset(seed=0)[0]

    def step(self, action):
        obs, _, term, trunc, _ = self.env.step(action)
        return obs, term or trunc

    def close(self):
        self.env.close()


class Vec:
    def __init__(self, name: str, size: int, n: int) -> None:
        from vlarl.envs import make_vec

        self.n = n
        self.env = make_vec(name, n, obs_mode="pixels", image_size=size)

    def reset(self):
        return self.env.reset(seed=0)[0]

    def step(self, action):
        obs, *_ = self.env.step(np.repeat(action[None], self.n, 0))  # resets itself
        return obs, False

    def close(self):
        self.env.close()


def steps_per_second(env, seconds: float, rng: np.random.Generator, per_step: int = 1) -> float:
    """Env steps per second over at least ``seconds`` (and at least 5 calls)."""
    env.reset()
    for _ in range(2):  # warm-up: first renders allocate buffers
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    calls, t0 = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - t0 < seconds:
        _, done = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        calls += 1
        if done:
            env.reset()
    return calls * per_step / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=84)
    args = p.parse_args()
    size = args.image_size
    builders = {
        "metaworld/drawer-open": {
            "native": lambda: NativeMetaWorld("drawer-open", size),
            "vlarl_default": lambda: Single("metaworld/drawer-open", size, False),
            "vlarl_fast": lambda: Single("metaworld/drawer-open", size, True),
            "workers_1": lambda: Vec("metaworld/drawer-open", size, 1),
            "workers_2": lambda: Vec("metaworld/drawer-open", size, 2),
        },
        "panda/pick-cube": {
            "native": lambda: NativePanda(size),
            "vlarl_default": lambda: Single("panda/pick-cube", size, False),
            "vlarl_fast": lambda: Single("panda/pick-cube", size, True),
            "workers_1": lambda: Vec("panda/pick-cube", size, 1),
            "workers_2": lambda: Vec("panda/pick-cube", size, 2),
        },
    }
    rates: dict[str, dict[str, list[float]]] = {e: {v: [] for v in b} for e, b in builders.items()}
    rng = np.random.default_rng(0)
    for r in range(args.rounds):
        for env_name, variants in builders.items():
            for variant, build in variants.items():
                env = build()
                per_step = env.n if isinstance(env, Vec) else 1
                try:
                    rate = steps_per_second(env, args.seconds, rng, per_step)
                finally:
                    env.close()
                rates[env_name][variant].append(rate)
                print(f"round {r} {env_name:24s} {variant:14s} {rate:8.1f} steps/s", flush=True)
        write(rates, args)


def write(rates: dict, args: argparse.Namespace) -> None:
    med = {e: {v: statistics.median(x) for v, x in vs.items()} for e, vs in rates.items()}

    def ratio(a: str, b: str) -> dict[str, float]:
        # Per round first (the two were measured minutes apart at most), then the median.
        return {e: statistics.median(x / y for x, y in zip(vs[a], vs[b])) for e, vs in rates.items()}

    speedup = ratio("vlarl_fast", "vlarl_default")
    vs_native = ratio("vlarl_fast", "native")
    scaling = ratio("workers_2", "workers_1")
    doc = {
        "command": "python " + " ".join(sys.argv),
        "image_size": args.image_size,
        "rounds": len(next(iter(next(iter(rates.values())).values()))),
        "speedup_vs_default": min(speedup.values()),
        "scaling_2_workers": min(scaling.values()),
        "speedup_vs_default_per_env": speedup,
        "speedup_vs_native_per_env": vs_native,
        "scaling_2_workers_per_env": scaling,
        "steps_per_s_median": med,
        "steps_per_s_rounds": rates,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}, LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS')}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "env_throughput.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        f"# Pixel env throughput ({args.image_size} px)",
        "",
        f"`{doc['command']}` on {doc['machine']}; steps/s are medians of {doc['rounds']} interleaved rounds, "
        "ratios the median of the per-round ratios.",
        "",
        "| env | native | vlarl, default render | vlarl, fast render | fast / default | fast / native | 1 worker | 2 workers | scaling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e, m in med.items():
        lines.append(
            f"| {e} | {m['native']:.1f} | {m['vlarl_default']:.1f} | {m['vlarl_fast']:.1f} | {speedup[e]:.2f}x | "
            f"{vs_native[e]:.2f}x | {m['workers_1']:.1f} | {m['workers_2']:.1f} | {scaling[e]:.2f}x |"
        )
    lines += ["", "Steps per second, all cameras rendered every step (Meta-World: `corner`; Panda: `front` and "
              "`wrist`). `speedup_vs_default` and `scaling_2_workers` in the JSON are the minimum over the envs."]
    (RESULTS / "env_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
