"""Multi-task pixel + instruction SFT on the five iRe-VLA Meta-World tasks.

    python benchmarks/sft_metaworld.py [--demos 50] [--low-data 8] [--steps 3000] [--eval-episodes 20]

Collects scripted pixel demos (corner camera, 84 px, expert noise 0.1) for each task, trains
one policy on all tasks with ``--demos`` episodes per task and one with ``--low-data``
episodes per task (the weak starting point later RL steps improve), evaluates each on every
task, and writes benchmarks/results/sft_metaworld.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")

RESULTS = Path(__file__).parent / "results"
TASKS = ("button-press-topdown", "drawer-open", "door-open", "window-open", "window-close")


def main() -> None:
    from vlarl.models.policy import PolicyConfig
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
    from vlarl.recipes.sft import SFTConfig, train_sft

    p = argparse.ArgumentParser()
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--low-data", type=int, nargs="+", default=[5, 8],
                   help="demos per task of the low-data runs; the first is the reported starting point")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--work", default="runs/bench_sft")
    args = p.parse_args()
    work = Path(args.work)
    env = dict(obs_mode="pixels", image_size=args.image_size, cameras=["corner"], episode_length=150)
    t0 = time.perf_counter()
    datasets = []
    for task in TASKS:
        out = work / "data" / task
        collect(CollectConfig(env=EnvConfig(name=f"metaworld/{task}", **env), episodes=args.demos, noise=0.1,
                              workers=2, seed=0, out=str(out)))
        datasets.append(str(out))
    collect_seconds = time.perf_counter() - t0
    doc: dict = {"command": "python " + " ".join(sys.argv), "tasks": list(TASKS), "env": env,
                 "collect_seconds": collect_seconds,
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    runs = {"full": args.demos, **{f"low_data_{n}": n for n in args.low_data}}
    for label, n in runs.items():
        run_dir = work / f"sft_{label}"
        if (run_dir / "results.json").exists():  # a finished run of this configuration: reuse it
            r = json.loads((run_dir / "results.json").read_text())
            doc[label] = _entry(r, n, wall=None)
            continue
        cfg = SFTConfig(datasets=datasets, episodes_per_dataset=n, policy=PolicyConfig(), steps=args.steps,
                        batch_size=128, lr=3e-4, eval_episodes=args.eval_episodes, eval_envs=2, video_episodes=1,
                        measure_cache_speedup=True, save_every=1000, run_dir=str(run_dir))
        t = time.perf_counter()
        doc[label] = _entry(train_sft(cfg), n, wall=time.perf_counter() - t)
        write(doc, args.low_data)
    write(doc, args.low_data)


def _entry(r: dict, n: int, wall: float | None) -> dict:
    keys = ("mean_success", "per_task", "train_seconds", "frames", "steps", "samples_per_s_cached",
            "samples_per_s_uncached", "cached_speedup")
    return {"demos_per_task": n, "wall_seconds": wall, **{k: r.get(k) for k in keys}}


def write(doc: dict, low_data: list[int]) -> None:
    full, low = doc.get("full"), doc.get(f"low_data_{low_data[0]}")
    if full:
        doc["mean_success"] = full["mean_success"]
        doc["per_task"] = full["per_task"]
        doc["training_wall_seconds"] = full["train_seconds"]
        doc["cached_speedup"] = full["cached_speedup"]
    if low:
        doc["low_data_mean_success"] = low["mean_success"]
        doc["low_data_per_task"] = low["per_task"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sft_metaworld.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# Multi-task pixel SFT on the five iRe-VLA Meta-World tasks", "",
             f"`{doc['command']}` on {doc['machine']}. One policy per row group, frozen EfficientNet-Lite0 "
             f"(cached tokens), TokenLearner trunk, MiniLM instruction, deterministic head; corner camera "
             f"{doc['env']['image_size']} px, 150-step episodes.", "",
             "| demos / task | task | success | 95% CI | mean length |", "|---|---|---|---|---|"]
    lows = [doc[f"low_data_{n}"] for n in low_data if f"low_data_{n}" in doc]
    for run in (r for r in (full, *lows) if r):
        for env, r in run["per_task"].items():
            lines.append(f"| {run['demos_per_task']} | {env} | {r['success_rate']:.2f} | "
                         f"{r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} | {r['mean_length']:.0f} |")
        lines.append(f"| {run['demos_per_task']} | **mean** | **{run['mean_success']:.2f}** | | |")
    for run in (r for r in (full, *lows) if r):
        if run:
            name = f"{run['demos_per_task']} demos/task"
            lines.append(f"\n{name}: {run['frames']} frames, {run['steps']} steps, training {run['train_seconds']:.0f} s, "
                         f"cached tokens {run['samples_per_s_cached']:.0f} samples/s vs live encoder "
                         f"{run['samples_per_s_uncached']:.0f} ({run['cached_speedup']:.1f}x).")
    (RESULTS / "sft_metaworld.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
