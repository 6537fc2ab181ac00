"""RLPD vs SAC from scratch vs SAC with demos in its buffer, on Meta-World from state.

    python benchmarks/rlpd_metaworld.py [--tasks drawer-open window-open button-press-topdown]
        [--seeds 0 1 2 3 4] [--methods rlpd sac_demos sac] [--set sac.utd=3 sac.ensemble=2]
        [--ablate no_warmup:random_steps=0 ...] [--workers 2]

Each method's settings are its config file's (configs/rlpd-metaworld.yaml,
sac-demos-metaworld.yaml, sac-metaworld.yaml), the task put in ``env.name``, then ``--set``
for every method (a CPU budget, say) — so a benchmark measures what a user's
``vlarl train rlpd --config ...`` runs. The methods differ only in where the demos go: RLPD
keeps them in an offline buffer and draws half of every minibatch from it, "SAC + demos"
copies them into its online buffer, "SAC" never sees them. ``--ablate NAME:key=value,...``
adds RLPD variants on the same seeds (what each of RLPD's settings buys). Each task gets
``--demos`` scripted demos with ``--demo-noise`` action noise.

Runs are scored with the shared protocol (vlarl.eval.protocol): a run's score is the mean of
its last 3 evaluations; per task and method, the mean and IQM across seeds with 95%
bootstrap intervals. Runs go seed by seed (every task and method of seed 0 first),
``--workers`` at a time, each in its own process with one torch thread; a finished run is
read back, so the same command continues a stopped benchmark. Results are written after every
run to benchmarks/results/<--out>.json (+ .md, + .png) with exactly what ran and what did not.
``--utd`` / ``--ensemble`` are kept as short forms of ``--set sac.utd=...``.
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
CONFIGS = {"rlpd": "configs/rlpd-metaworld.yaml", "sac_demos": "configs/sac-demos-metaworld.yaml",
           "sac": "configs/sac-metaworld.yaml"}
METHODS = tuple(CONFIGS)
COLORS = {"rlpd": "tab:blue", "sac": "tab:orange", "sac_demos": "tab:green"}


def run_config(job: dict):
    """The RLPDConfig of one run: the method's config file, the task, ``--set``, the ablation."""
    from vlarl.recipes.rlpd import RLPDConfig
    from vlarl.runtime import load_config

    a = job["args"]
    method = job["method"].split(":")[0]
    overrides = [f"env.name=metaworld/{job['task']}", *a["set"], *job.get("ablation", []),
                 f"seed={job['seed']}", f"run_dir={job['run_dir']}", f"steps={a['steps']}",
                 f"save_every={a['steps']}", "save_buffer=false"]
    if a["eval_every"]:
        overrides.append(f"eval_every={a['eval_every']}")
    if a["eval_episodes"]:
        overrides.append(f"eval_episodes={a['eval_episodes']}")
    if method != "sac":
        overrides.append(f"demos={job['demos']}")
    overrides.append("eval_envs=1")
    return load_config(RLPDConfig, CONFIGS[method], overrides)


def run_one(job: dict) -> dict:
    """One training run in a worker process; returns its evals and wall time (a finished run is
    read back, a stopped one continues from its checkpoint or starts again if it had none)."""
    import torch

    torch.set_num_threads(1)
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd
    from vlarl.runtime import finish_stage

    r = finish_stage(train_rlpd, RLPDConfig, run_config(job), progress=False)
    return {"evals": r["evals"], "seconds": r["seconds"]}


def collect_demos(task: str, episodes: int, noise: float, out: Path) -> None:
    from vlarl.recipes.collect import CollectConfig, collect
    from vlarl.recipes.rlpd import RLPDConfig
    from vlarl.runtime import load_config

    if not (out / "meta" / "info.json").exists():
        env = load_config(RLPDConfig, CONFIGS["rlpd"], [f"env.name=metaworld/{task}"]).env
        collect(CollectConfig(env=env, episodes=episodes, noise=noise, seed=50_000, out=str(out)), progress=False)


def parse_ablation(text: str) -> tuple[str, list[str]]:
    """``NAME:key=value,key=value`` -> (NAME, overrides)."""
    name, sep, rest = text.partition(":")
    if not sep or not name or not rest:
        raise SystemExit(f"--ablate {text!r}: expected NAME:key=value[,key=value...]")
    return name, rest.split(",")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["drawer-open", "window-open", "button-press-topdown"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--ablate", nargs="*", default=[], help="RLPD variants, NAME:key=value[,key=value...]")
    p.add_argument("--set", nargs="*", default=[], help="overrides for every method, key=value")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--utd", type=float, default=None, help="short for --set sac.utd=N")
    p.add_argument("--ensemble", type=int, default=None, help="short for --set sac.ensemble=N")
    p.add_argument("--eval-every", type=int, default=None, help="default: the config's")
    p.add_argument("--eval-episodes", type=int, default=None, help="default: the config's")
    p.add_argument("--demos", type=int, default=10)
    p.add_argument("--demo-noise", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="runs/bench_rlpd")
    p.add_argument("--out", default="rlpd_metaworld", help="results name in benchmarks/results/")
    args = p.parse_args()
    args.set = [*args.set, *([f"sac.utd={args.utd}"] if args.utd else []),
                *([f"sac.ensemble={args.ensemble}"] if args.ensemble else [])]
    ablations = dict(parse_ablation(t) for t in args.ablate)
    work = Path(args.work)
    doc = {"command": "python " + " ".join(sys.argv), "settings": vars(args), "status": "running",
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "configs": {m: CONFIGS[m] for m in args.methods}, "ablations": ablations, "runs": {}, "not_finished": []}
    jobs = []
    for task in args.tasks:
        if args.methods != ["sac"]:
            collect_demos(task, args.demos, args.demo_noise, work / "demos" / f"{task}-noise{args.demo_noise}")
    variants = [(m, []) for m in args.methods] + [(f"rlpd:{n}", o) for n, o in ablations.items()]
    for seed in args.seeds:
        for task in args.tasks:
            for method, ablation in variants:
                jobs.append({"task": task, "method": method, "seed": seed, "ablation": ablation,
                             "demos": str(work / "demos" / f"{task}-noise{args.demo_noise}"),
                             "run_dir": str(work / task / method.replace(":", "-") / f"seed{seed}"), "args": vars(args)})
    doc["learner"] = {m: describe_learner(run_config(next(j for j in jobs if j["method"] == m)))
                      for m, _ in variants if any(j["method"] == m for j in jobs)}
    doc["not_finished"] = [key(j) for j in jobs]
    write(doc, args)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("forkserver")) as pool:
        pending = {pool.submit(run_one, j): j for j in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                j = pending.pop(f)
                doc["not_finished"].remove(key(j))
                try:
                    doc["runs"][key(j)] = r = f.result()
                except Exception as err:  # keep the other runs going; the failure is recorded
                    doc.setdefault("failed", {})[key(j)] = f"{type(err).__name__}: {err}"
                    print(f"{key(j)} failed: {err}", flush=True)
                else:
                    print(f"{key(j)} {[(e['step'], e['success']) for e in r['evals']]} "
                          f"({r['seconds'] / 60:.1f} min; {(time.perf_counter() - t0) / 60:.0f} min in)", flush=True)
                write(doc, args)
    doc["status"] = "complete" if not doc.get("failed") else "complete, with failures"
    write(doc, args)


def describe_learner(cfg) -> str:
    s = cfg.sac
    return (f"E={s.ensemble}, Z={s.subset}, UTD {s.utd:g}, batch {s.batch_size} (offline share {s.offline_ratio}), "
            f"reward scale {s.reward_scale}, gamma {s.gamma}, lr {s.lr}, {s.layers}x{s.hidden} LayerNorm critics, "
            f"random steps {cfg.random_steps}, {cfg.eval_episodes} eval episodes every {cfg.eval_every} env steps")


def key(job: dict) -> str:
    return f"{job['task']}/{job['method']}/{job['seed']}"


def write(doc: dict, args: argparse.Namespace) -> None:
    from vlarl.eval.protocol import LAST_K, aggregate, curve, run_score

    per: dict = {}
    for k, run in doc["runs"].items():
        task, method, seed = k.split("/")
        if run["evals"] and run["evals"][-1]["step"] >= args.steps:
            per.setdefault(task, {}).setdefault(method, {})[int(seed)] = run
    doc["scores"] = {}
    for task, ms in per.items():
        for method, runs in ms.items():
            scores = [run_score(runs[s]["evals"]) for s in sorted(runs)]
            agg = aggregate(scores)
            doc["scores"].setdefault(task, {})[method] = {
                **agg.to_dict(), "per_seed": dict(zip(sorted(runs), scores)),
                "minutes_per_run": sum(r["seconds"] for r in runs.values()) / len(runs) / 60,
                "curve": curve([runs[s]["evals"] for s in sorted(runs)])}
    for method in METHODS:  # the fixed keys: mean over seeds of the last-3-evaluation score
        doc[f"{method}_success_at_{args.steps // 1000}k"] = {t: ms[method]["mean"] for t, ms in doc["scores"].items()
                                                              if method in ms}
    doc["seeds"] = {t: {m: v["seeds"] for m, v in ms.items()} for t, ms in doc["scores"].items()}
    doc["protocol"] = f"score = mean of a run's last {LAST_K} evaluations; mean and IQM over seeds, 95% bootstrap CIs"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# RLPD vs SAC vs SAC + demos on Meta-World", "",
             f"`{doc['command']}` on {doc['machine']} — status: {doc['status']}.", "",
             f"{args.steps} env steps, {args.demos} scripted demos (action noise {args.demo_noise}); "
             f"{doc['protocol']} (vlarl.eval.protocol).", ""]
    lines += [f"- {m}: `{doc['configs'].get(m.split(':')[0], '')}`"
              + (f" + {', '.join(doc['ablations'][m.split(':')[1]])}" if ":" in m else "")
              + (f" + {', '.join(args.set)}" if args.set else "") + f" — {desc}"
              for m, desc in doc.get("learner", {}).items()]
    lines += ["", "| task | method | score (mean, 95% CI) | IQM (95% CI) | per seed | seeds | min per run |",
              "|---|---|---|---|---|---|---|"]
    for t, ms in doc["scores"].items():
        for m, v in ms.items():
            seeds = ", ".join(f"{x:.2f}" for x in v["per_seed"].values())
            lines.append(f"| {t} | {m} | {v['mean']:.2f} ({v['mean_ci95'][0]:.2f}-{v['mean_ci95'][1]:.2f}) | "
                         f"{v['iqm']:.2f} ({v['iqm_ci95'][0]:.2f}-{v['iqm_ci95'][1]:.2f}) | {seeds} | {v['seeds']} | "
                         f"{v['minutes_per_run']:.0f} |")
    if doc["not_finished"]:
        lines += ["", "Not finished: " + ", ".join(doc["not_finished"])]
    if doc.get("failed"):
        lines += ["", "Failed: " + "; ".join(f"{k}: {v}" for k, v in doc["failed"].items())]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    plot(doc["scores"], RESULTS / f"{args.out}.png")


def plot(scores: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not scores:
        return
    fig, axes = plt.subplots(1, len(scores), figsize=(4.5 * len(scores), 3.4), squeeze=False)
    for ax, (task, ms) in zip(axes[0], scores.items()):
        for method, v in ms.items():
            rows = v["curve"]
            steps = [r["step"] for r in rows]
            color = COLORS.get(method)
            line, = ax.plot(steps, [r["mean"] for r in rows], "o-", markersize=3, color=color,
                            label=f"{method} ({v['seeds']} seed{'s' * (v['seeds'] > 1)})")
            ax.fill_between(steps, [r["lo"] for r in rows], [r["hi"] for r in rows], color=line.get_color(), alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("success (mean, 95% bootstrap band)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
