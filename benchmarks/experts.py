"""Success rate of every registered env's scripted expert.

    python benchmarks/experts.py [--episodes 20] [--noise 0.0] [--workers 2]

Writes benchmarks/results/experts.json (keys = env names) and experts.md. Episodes use
state observations (the experts read simulator state; pixels would not change what they
do), each env's default episode length, and seeds 0..N-1.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure(name: str, episodes: int, noise: float) -> dict:
    import numpy as np

    from vlarl.envs import ScriptedExpert, make
    from vlarl.eval import run_episode, wilson_interval

    env = make(name, obs_mode="state")
    expert = ScriptedExpert(env, noise=noise)
    successes, lengths = [], []
    t0 = time.perf_counter()
    for seed in range(episodes):
        expert.rng = np.random.default_rng(seed)
        result = run_episode(env, expert, seed=seed, keep_arrays=False)
        successes.append(result.success)
        lengths.append(result.length)
    episode_length = env.unwrapped.episode_length
    env.close()
    k = int(sum(successes))
    lo, hi = wilson_interval(k, episodes)
    return {
        "success_rate": k / episodes,
        "ci95": [round(lo, 3), round(hi, 3)],
        "episodes": episodes,
        "mean_length": float(np.mean(lengths)),
        "episode_length_limit": episode_length,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--envs", nargs="*", help="default: every registered env")
    args = p.parse_args()
    from vlarl.envs import ENV_NAMES

    names = args.envs or list(ENV_NAMES)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    ctx = mp.get_context("forkserver")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        futures = {pool.submit(measure, n, args.episodes, args.noise): n for n in names}
        for fut in as_completed(futures):
            name = futures[fut]
            results[name] = fut.result()
            print(f"{name:40s} {results[name]['success_rate']:.2f}  len {results[name]['mean_length']:.0f}", flush=True)
            _write(results, names, args)
    _write(results, names, args)


def _write(results: dict, names: list[str], args: argparse.Namespace) -> None:
    ordered = {n: results[n] for n in names if n in results}
    rates = [r["success_rate"] for r in ordered.values()]
    doc = {
        **ordered,
        "_meta": {
            "command": "python " + " ".join(sys.argv),
            "episodes_per_env": args.episodes,
            "expert_noise": args.noise,
            "envs_measured": len(ordered),
            "mean_success": sum(rates) / len(rates) if rates else None,
            "envs_below_0.9": [n for n, r in ordered.items() if r["success_rate"] < 0.9],
            "machine": f"{platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}",
        },
    }
    (RESULTS / "experts.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Scripted experts: success rate per env",
        "",
        f"`{doc['_meta']['command']}` — {args.episodes} episodes per env (seeds 0..{args.episodes - 1}), "
        f"expert noise {args.noise}, state observations, each env's default episode length.",
        "",
        "| env | success | 95% CI | mean length | limit |",
        "|---|---|---|---|---|",
    ]
    for n, r in ordered.items():
        lines.append(f"| {n} | {r['success_rate']:.2f} | {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} | "
                     f"{r['mean_length']:.0f} | {r['episode_length_limit']} |")
    if rates:
        lines += ["", f"Mean over {len(rates)} envs: {doc['_meta']['mean_success']:.3f}. "
                  f"Below 0.9: {', '.join(doc['_meta']['envs_below_0.9']) or 'none'}."]
    (RESULTS / "experts.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
