"""RLPD vs SAC from scratch vs SAC with demos in its buffer, on Meta-World from state.

    python benchmarks/rlpd_metaworld.py [--tasks drawer-open door-open window-open] [--seeds 0 1 2]
        [--steps 20000] [--utd 20] [--ensemble 10] [--eval-every 2000] [--demos 10]

Each task gets ``--demos`` scripted demos (state observations); every method runs with the
same learner settings, and success (20 deterministic eval episodes) is recorded every
``--eval-every`` env steps. Results are written after every run to
benchmarks/results/rlpd_metaworld.json (+ .md, + plot), with exactly what ran: on CPU the
full RLPD budget (UTD 20, E = 10, 20k steps) takes hours per run, so smaller settings are
recorded as such.
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

RESULTS = Path(__file__).parent / "results"
METHODS = ("rlpd", "sac", "sac_demos")


def main() -> None:
    from vlarl.algos.sac import SACConfig
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd

    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="+", default=["drawer-open", "door-open", "window-open"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--utd", type=int, default=20)
    p.add_argument("--ensemble", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=2_000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--demos", type=int, default=10)
    p.add_argument("--work", default="runs/bench_rlpd")
    args = p.parse_args()
    work = Path(args.work)
    doc = {"command": "python " + " ".join(sys.argv), "settings": vars(args), "status": "running",
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "runs": {}}
    for task in args.tasks:
        env = EnvConfig(name=f"metaworld/{task}", obs_mode="state", episode_length=200)
        demos = work / "demos" / task
        collect(CollectConfig(env=env, episodes=args.demos, out=str(demos)), progress=False)
        for method in args.methods:
            for seed in args.seeds:
                key = f"{task}/{method}/{seed}"
                sac = SACConfig(ensemble=args.ensemble, utd=args.utd, offline_ratio=0.0 if method == "sac_demos" else 0.5)
                cfg = RLPDConfig(env=env, sac=sac, demos=None if method == "sac" else str(demos),
                                 demos_in_online_buffer=method == "sac_demos", steps=args.steps,
                                 random_steps=min(5_000, args.steps // 4) if method == "sac" else 0,
                                 eval_every=args.eval_every,
                                 eval_episodes=args.eval_episodes, save_every=args.steps, save_buffer=False,
                                 seed=seed, run_dir=str(work / task / method / f"seed{seed}"))
                if (Path(cfg.run_dir) / "results.json").exists():
                    r = json.loads((Path(cfg.run_dir) / "results.json").read_text())
                else:
                    t = time.perf_counter()
                    r = train_rlpd(cfg, progress=False)
                    r["wall_seconds"] = time.perf_counter() - t
                doc["runs"][key] = {"evals": r["evals"], "seconds": r.get("wall_seconds", r.get("seconds"))}
                write(doc, args)
                print(key, [(e["step"], e["success"]) for e in r["evals"]], flush=True)
    doc["status"] = "complete"
    write(doc, args)


def write(doc: dict, args: argparse.Namespace) -> None:
    import numpy as np

    summary: dict = {}
    for key, run in doc["runs"].items():
        task, method, _ = key.split("/")
        final = run["evals"][-1]["success"] if run["evals"] else None
        summary.setdefault(task, {}).setdefault(method, []).append(final)
    doc["final_success"] = {t: {m: float(np.mean(v)) for m, v in ms.items()} for t, ms in summary.items()}
    if args.steps == 20_000:
        for method in METHODS:
            doc[f"{method}_success_at_20k"] = {t: ms[method] for t, ms in doc["final_success"].items() if method in ms}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rlpd_metaworld.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# RLPD vs SAC vs SAC + demos on Meta-World (state)", "",
             f"`{doc['command']}` on {doc['machine']} — status: {doc['status']}. Settings: UTD {args.utd}, "
             f"E = {args.ensemble}, {args.steps} env steps, {args.demos} demos, seeds {args.seeds}.", "",
             "| task | method | final success (mean over seeds) | seeds done |", "|---|---|---|---|"]
    for t, ms in summary.items():
        for m, v in ms.items():
            lines.append(f"| {t} | {m} | {np.mean(v):.2f} | {len(v)} |")
    (RESULTS / "rlpd_metaworld.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
