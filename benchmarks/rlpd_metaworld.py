"""RLPD vs SAC from scratch vs SAC with demos in its buffer, on Meta-World from state.

    python benchmarks/rlpd_metaworld.py [--tasks drawer-open window-open button-press-topdown]
        [--seeds 0 1 2] [--steps 20000] [--utd 20] [--ensemble 10] [--workers 2]

Each task gets ``--demos`` scripted demos (state observations). Every method runs with the
same learner settings (RLPD's network, LayerNorm critics, batch 256); they differ only in
where the demos go: RLPD keeps them in an offline buffer and draws half of every minibatch
from it, "SAC + demos" copies them into its online buffer, "SAC" never sees them (and starts
with 5k random steps). Success (``--eval-episodes`` deterministic episodes) is recorded every
``--eval-every`` env steps.

Runs go seed by seed (every task and method of seed 0 first), ``--workers`` at a time, each in
its own process with one torch thread; results are written after every run to
benchmarks/results/<--out>.json (+ .md, + .png) with exactly what ran and what did
not finish. On CPU RLPD's full budget (UTD 20, E = 10) takes hours per run, so the settings
actually used are recorded beside the results; ``--pixels-task`` adds one pixel-based RLPD run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

RESULTS = Path(__file__).parent / "results"
METHODS = ("rlpd", "sac", "sac_demos")
# Meta-World's reward is dense and positive, so ending the episode at success would pay the
# agent to stay just short of it; episodes run their full 200 steps (success = any step).
NO_TERMINATION = {"terminate_on_success": False}
COLORS = {"rlpd": "tab:blue", "sac": "tab:orange", "sac_demos": "tab:green"}


def run_one(job: dict) -> dict:
    """One training run in a worker process; returns its evals and wall time."""
    import torch

    torch.set_num_threads(1)
    from vlarl.algos.sac import SACConfig
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd

    a = job["args"]
    pixels = job["method"] == "rlpd_pixels"
    env = env_config(job["task"], pixels)
    sac = SACConfig(ensemble=a["ensemble"], utd=a["utd"], batch_size=a["pixel_batch"] if pixels else 256,
                    offline_ratio=0.0 if job["method"] == "sac_demos" else 0.5, compile=a["compile"],
                    critic_dtype=a["critic_dtype"], reward_scale=a["reward_scale"])
    steps = a["pixel_steps"] if pixels else a["steps"]
    cfg = RLPDConfig(env=env, sac=sac, demos=None if job["method"] == "sac" else job["demos"],
                     demos_in_online_buffer=job["method"] == "sac_demos", steps=steps,
                     random_steps=5_000 if job["method"] == "sac" else 0, eval_every=a["eval_every"],
                     eval_episodes=a["eval_episodes"], eval_envs=1, save_every=steps, save_buffer=False,
                     seed=job["seed"], run_dir=job["run_dir"])
    done = Path(cfg.run_dir) / "results.json"
    if done.exists():
        r = json.loads(done.read_text())
        return {"evals": r["evals"], "seconds": r["seconds"]}
    r = train_rlpd(cfg, progress=False)
    return {"evals": r["evals"], "seconds": r["seconds"]}


def env_config(task: str, pixels: bool):
    """The same env for demos and training: 200-step episodes that run to the end."""
    from vlarl.recipes.collect import EnvConfig

    return EnvConfig(name=f"metaworld/{task}", obs_mode="pixels" if pixels else "state", episode_length=200,
                     options=NO_TERMINATION)


def collect_demos(task: str, episodes: int, out: Path, pixels: bool) -> None:
    from vlarl.recipes.collect import CollectConfig, collect

    if not (out / "meta" / "info.json").exists():
        collect(CollectConfig(env=env_config(task, pixels), episodes=episodes, out=str(out)), progress=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", nargs="+", default=["drawer-open", "window-open", "button-press-topdown"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--utd", type=int, default=20)
    p.add_argument("--ensemble", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=2_500)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--demos", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reward-scale", type=float, default=1.0)
    p.add_argument("--compile", action="store_true", help="torch.compile the critic loss")
    p.add_argument("--critic-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--pixels-task", default=None, help="also one RLPD run from 84 px pixels on this task")
    p.add_argument("--pixel-steps", type=int, default=5_000)
    p.add_argument("--pixel-batch", type=int, default=128)
    p.add_argument("--work", default="runs/bench_rlpd")
    p.add_argument("--out", default="rlpd_metaworld", help="results name in benchmarks/results/")
    args = p.parse_args()
    work = Path(args.work)
    doc = {"command": "python " + " ".join(sys.argv), "settings": vars(args), "status": "running",
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "learner": f"E={args.ensemble} critics, target min over Z=2, UTD {args.utd}, batch 256 "
                      f"(critics {args.critic_dtype}{', compiled' if args.compile else ''}), "
                      f"reward scale {args.reward_scale}, "
                      "(RLPD: 128 offline + 128 online), LayerNorm MLP critics and actor 256x2, lr 3e-4, "
                      "gamma 0.99, tau 0.005, target entropy -|A|/2",
           "runs": {}, "not_finished": []}
    jobs = []
    for task in args.tasks if args.methods else []:
        collect_demos(task, args.demos, work / "demos" / task, pixels=False)
    for seed in args.seeds:
        for task in args.tasks:
            for method in args.methods:
                jobs.append({"task": task, "method": method, "seed": seed, "demos": str(work / "demos" / task),
                             "run_dir": str(work / task / method / f"seed{seed}"), "args": vars(args)})
    if args.pixels_task:
        collect_demos(args.pixels_task, args.demos, work / "demos_pixels" / args.pixels_task, pixels=True)
        jobs.insert(len(args.tasks) * len(args.methods),  # after the first seed
                    {"task": args.pixels_task, "method": "rlpd_pixels", "seed": 0,
                     "demos": str(work / "demos_pixels" / args.pixels_task),
                     "run_dir": str(work / args.pixels_task / "rlpd_pixels" / "seed0"), "args": vars(args)})
    doc["not_finished"] = [key(j) for j in jobs]
    write(doc, args)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("forkserver")) as pool:
        pending = {pool.submit(run_one, j): j for j in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                j = pending.pop(f)
                try:
                    r = f.result()
                except Exception as err:  # keep the other runs going; the failure is recorded
                    doc.setdefault("failed", {})[key(j)] = f"{type(err).__name__}: {err}"
                    doc["not_finished"].remove(key(j))
                    print(f"{key(j)} failed: {err}", flush=True)
                    write(doc, args)
                    continue
                doc["runs"][key(j)] = r
                doc["not_finished"].remove(key(j))
                print(f"{key(j)} {[(e['step'], e['success']) for e in r['evals']]} "
                      f"({r['seconds'] / 60:.1f} min; {(time.perf_counter() - t0) / 60:.0f} min in)", flush=True)
                write(doc, args)
    doc["status"] = "complete"
    write(doc, args)


def key(job: dict) -> str:
    return f"{job['task']}/{job['method']}/{job['seed']}"


def write(doc: dict, args: argparse.Namespace) -> None:
    import numpy as np

    per: dict = {}
    for k, run in doc["runs"].items():
        task, method, _ = k.split("/")
        per.setdefault(task, {}).setdefault(method, []).append(run)
    doc["final_success"] = {t: {m: float(np.mean([r["evals"][-1]["success"] for r in rs])) for m, rs in ms.items()}
                            for t, ms in per.items()}
    doc["seeds_finished"] = {t: {m: len(rs) for m, rs in ms.items()} for t, ms in per.items()}
    for method in METHODS:
        at = {t: ms[method] for t, ms in doc["final_success"].items()
              if method in ms and all(r["evals"][-1]["step"] == 20_000 for r in per[t][method])}
        doc[f"{method}_success_at_20k"] = at
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# RLPD vs SAC vs SAC + demos on Meta-World", "",
             f"`{doc['command']}` on {doc['machine']} — status: {doc['status']}.", "",
             f"Learner for every method: {doc['learner']}; {args.steps} env steps, {args.demos} scripted demos, "
             f"{args.eval_episodes} eval episodes every {args.eval_every} steps.", "",
             *([f"Pixel runs (`rlpd_pixels`): {args.pixel_steps} env steps, batch {args.pixel_batch}, 84 px corner "
                f"camera + 4-d proprio, conv encoder trained by the critic loss, random-shift augmentation.", ""]
               if args.pixels_task else []),
             "| task | method | final success (mean over seeds) | per seed | seeds | minutes per run |",
             "|---|---|---|---|---|---|"]
    for t, ms in per.items():
        for m, rs in ms.items():
            finals = ", ".join(f"{r['evals'][-1]['success']:.2f}" for r in rs)
            mins = np.mean([r["seconds"] for r in rs]) / 60
            lines.append(f"| {t} | {m} | {doc['final_success'][t][m]:.2f} | {finals} | {len(rs)} | {mins:.0f} |")
    if doc["not_finished"]:
        lines += ["", "Not finished: " + ", ".join(doc["not_finished"])]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    plot(per, RESULTS / f"{args.out}.png")


def plot(per: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not per:
        return
    fig, axes = plt.subplots(1, len(per), figsize=(4.5 * len(per), 3.4), squeeze=False)
    for ax, (task, ms) in zip(axes[0], per.items()):
        for method in [m for m in (*METHODS, "rlpd_pixels") if m in ms]:  # one colour per method in every panel
            rs = ms[method]
            steps = [e["step"] for e in rs[0]["evals"]]
            curves = np.array([[e["success"] for e in r["evals"]] for r in rs if len(r["evals"]) == len(steps)])
            mean = curves.mean(0)
            color = COLORS.get(method, "tab:purple")
            ax.plot(steps, mean, "o-", color=color, label=f"{method} ({len(curves)} seed{'s' * (len(curves) > 1)})")
            if len(curves) > 1:
                ax.fill_between(steps, curves.min(0), curves.max(0), color=color, alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("success rate")
    for ax in axes[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
