"""GRAPE on the five Meta-World tasks of the SFT benchmark, from a low-data SFT policy, and
the alignment objectives (safety: a keep-out zone; efficiency: fewer steps).

    python benchmarks/grape_metaworld.py --run task         # the five tasks, objective "task"
    python benchmarks/grape_metaworld.py --run safety       # keep-out zone, on --align-tasks
    python benchmarks/grape_metaworld.py --run efficiency   # step cost, on --align-tasks
    python benchmarks/grape_metaworld.py --report           # merge into grape.{json,md}

Start: SFT of the VLA with the 256-bin token head on 1 scripted pixel demo per task (corner
camera 84 px, 150-step episodes; the demos of the SFT benchmark), 1000 steps. Each run then
does ``--iterations`` GRAPE iterations: per task K sampled trajectories, GCPG scores
(0.01 log π + 1 R_ext + 5 success) from the hand-written stage costs, top-m / bottom-m pairs,
TPO (β 0.1) on adapter and head against the policy that sampled. Every evaluation is the
deterministic (argmax-token) policy on the same ``--eval-episodes`` start states per task.
Finished runs are reused; ``--run`` resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")

RESULTS = Path(__file__).parent / "results"
TASKS = ("button-press-topdown", "drawer-open", "door-open", "window-open", "window-close")
ENV = dict(obs_mode="pixels", image_size=84, cameras=["corner"], episode_length=150)
# A shelf 30 cm above the table over the whole workspace: the SFT policy lifts the arm into
# it on the way to the handle (in 16 rollouts: drawer-open 44%, window-close 94%), and
# sampled paths that stay lower exist.
KEEP_OUT = {"low": [-0.5, 0.3, 0.3], "high": [0.5, 1.0, 0.6]}


def sft_dir(a: argparse.Namespace) -> Path:
    """The shared low-data SFT policy (token head), trained once."""
    import torch

    from vlarl.models.policy import PolicyConfig
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
    from vlarl.recipes.sft import SFTConfig, train_sft

    out = Path(a.work) / f"sft_tokens_{a.demos}"
    if (out / "results.json").exists():
        return out
    torch.set_num_threads(a.threads)
    datasets = []
    for task in TASKS:  # the SFT benchmark's demos (same settings and seed); collected if missing
        d = Path("runs/bench_sft/data") / task
        if not (d / "meta" / "episodes.jsonl").exists():
            collect(CollectConfig(env=EnvConfig(name=f"metaworld/{task}", **ENV), episodes=max(a.demos, 5), noise=0.1,
                                  workers=2, seed=0, out=str(d)))
        datasets.append(str(d))
    train_sft(SFTConfig(datasets=datasets, episodes_per_dataset=a.demos, policy=PolicyConfig(head="tokens"),
                        steps=a.sft_steps, batch_size=128, lr=3e-4, save_every=10_000, eval_episodes=a.eval_episodes,
                        eval_envs=2, video_episodes=0, run_dir=str(out)))
    return out


def run(a: argparse.Namespace) -> None:
    import torch

    from vlarl.algos.grape import GCPGWeights, TPOConfig
    from vlarl.envs.stage_costs import KeepOutZone
    from vlarl.recipes.grape import GRAPEConfig, train_grape
    from vlarl.runtime import Run

    sft = sft_dir(a)
    torch.set_num_threads(a.threads)
    tasks = TASKS if a.run == "task" else a.align_tasks
    run_dir = Path(a.work) / (a.run + a.variant)
    cfg = GRAPEConfig(sft_run=str(sft), tasks=[f"metaworld/{t}" for t in tasks], iterations=a.iterations,
                      samples_per_task=a.samples, samples_per_start=a.samples_per_start, pairs_per_task=a.pairs,
                      tpo=TPOConfig(lr=a.lr, epochs=a.epochs, batch_pairs=a.batch_pairs, sft_weight=a.sft_weight),
                      weights=GCPGWeights(ext_weight=a.ext_weight), temperature=a.temperature,
                      objective=a.run, keep_out=KeepOutZone(**KEEP_OUT), eval_episodes=a.eval_episodes, eval_envs=2,
                      sample_envs=2, video_episodes=1, seed=a.seed, run_dir=str(run_dir))
    if (run_dir / "results.json").exists():
        return
    resume = Run.resume(run_dir, GRAPEConfig) if (run_dir / "checkpoints").exists() else None
    train_grape(None if resume else cfg, resume=resume)


def report(a: argparse.Namespace) -> None:
    from vlarl.recipes.grape import GRAPEConfig
    from vlarl.runtime import load_config

    runs = {}
    for d in sorted(Path(a.work).iterdir()):
        if (d / "results.json").exists() and (d / "config.yaml").exists() and not d.name.startswith("sft"):
            runs[d.name] = json.loads((d / "results.json").read_text())
            c = load_config(GRAPEConfig, d / "config.yaml")
            runs[d.name]["settings"] = {"samples_per_task": c.samples_per_task, "pairs_per_task": c.pairs_per_task,
                                        "tpo_lr": c.tpo.lr, "tpo_epochs": c.tpo.epochs, "sft_weight": c.tpo.sft_weight,
                                        "ext_weight": c.weights.ext_weight, "temperature": c.temperature}
    if "task" not in runs:
        raise SystemExit("no finished 'task' run yet")
    task = runs["task"]
    out = {
        "command": "python benchmarks/grape_metaworld.py --run task / --run safety / --run efficiency, then --report",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "mean_success_sft": task["mean_success_sft"],
        "success_per_iteration": task["success_per_iteration"],
        "mean_success_gain": task["mean_success_gain"],
        "target_gain": 0.15,
        "runs": runs,
    }
    align = {}
    for name in sorted(n for n in runs if n.startswith(("safety", "efficiency"))):
        r = runs[name]
        first, last = r["iterations"][0], r["iterations"][-1]
        envs = list(first["per_task"])
        # the task-objective run on the same tasks, at the same iteration: the comparison that isolates the cost swap
        t_last = {e: task["iterations"][-1]["per_task"][e] for e in envs}
        sft, aligned, plain = _figures(first["per_task"]), _figures(last["per_task"]), _figures(t_last)
        align[name] = {
            "tasks": envs, "sft": sft, "aligned": aligned, "task_objective": plain,
            # what the alignment costs in success, against the SFT start and against GRAPE with the task costs
            "success_cost_vs_sft": sft["success"] - aligned["success"],
            "success_cost_vs_task_objective": plain["success"] - aligned["success"],
            "violation_ratio_vs_sft": aligned["violation_rate"] / sft["violation_rate"] if sft["violation_rate"] else None,
            "length_change_vs_sft": aligned["mean_length"] - sft["mean_length"],
            "per_task": {e: {"sft": first["per_task"][e], "aligned": last["per_task"][e], "task_objective": t_last[e]}
                         for e in envs},
        }
    out["alignment"] = align
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grape.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "grape.md").write_text(markdown(out))


def _figures(per_task: dict) -> dict:
    import numpy as np

    def mean(key: str) -> float | None:
        values = [r[key] for r in per_task.values() if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    return {"success": mean("success_rate"), "mean_length": mean("mean_length"),
            "mean_length_success": mean("mean_length_success"), "violation_rate": mean("violation_rate"),
            "steps_in_zone": mean("steps_in_zone")}


def markdown(out: dict) -> str:
    task = out["runs"]["task"]
    hist = task["iterations"]
    lines = ["# GRAPE on five Meta-World tasks (pixels), from a low-data SFT policy", "",
             f"`{out['command']}` on {out['machine']}. " + (__doc__ or "").split("Start:", 1)[1].split("Finished")[0].strip()
             .replace("\n", " "), "",
             "| task | SFT | " + " | ".join(f"iteration {h['iteration']}" for h in hist[1:]) + " |",
             "|---|" + "---|" * len(hist)]
    for e in hist[0]["per_task"]:
        lines.append(f"| {e} | " + " | ".join(f"{h['per_task'][e]['success_rate']:.2f} "
                                              f"({h['per_task'][e]['ci95'][0]:.2f}-{h['per_task'][e]['ci95'][1]:.2f})"
                                              for h in hist) + " |")
    lines.append("| **mean success** | " + " | ".join(f"**{h['mean_success_rate']:.2f}**" for h in hist) + " |")
    lines.append("| mean length | " + " | ".join(f"{h['mean_length']:.1f}" for h in hist) + " |")
    lines += ["", f"Settings: {_settings(task)}.", "",
              f"Mean success gain over SFT after {len(hist) - 1} iterations: **{out['mean_success_gain']:+.2f}** "
              f"(target >= {out['target_gain']}).", ""]
    lines.append("Sampled trajectories per iteration (success of the samples, pairs, TPO loss first -> last step):")
    lines.append("")
    for h in hist[1:]:
        s = h["samples"]
        rate = sum(v["success_rate"] for v in s.values()) / len(s)
        tpo = h.get("tpo", {})
        lines.append(f"- iteration {h['iteration']}: sample success {rate:.2f}, {h['pairs']} pairs, "
                     f"TPO loss {tpo.get('tpo_loss_first', float('nan')):.3f} -> {tpo.get('tpo_loss_last', float('nan')):.3f}, "
                     f"pair accuracy {tpo.get('pair_accuracy_first', float('nan')):.2f} -> "
                     f"{tpo.get('pair_accuracy_last', float('nan')):.2f}, {h['seconds'] / 60:.1f} min")
    variants = {n: r for n, r in out["runs"].items() if n.startswith("task-")}
    if variants:
        lines += ["", "Other settings of the same run (mean success per iteration, SFT first):", ""]
        for n, r in variants.items():
            lines.append(f"- `{n}` ({_settings(r)}): " + " -> ".join(f"{x:.2f}" for x in r["success_per_iteration"])
                         + f"; gain {r['mean_success_gain']:+.2f}")
    for name, al in out.get("alignment", {}).items():
        lines += ["", f"## Alignment: {name} ({', '.join(al['tasks'])}; {_settings(out['runs'][name])})", "",
                  "| policy | success | mean length | length of successes | keep-out violation rate | steps in zone |",
                  "|---|---|---|---|---|---|"]
        for label, key in (("SFT", "sft"), ("GRAPE, objective task", "task_objective"), (f"GRAPE, objective {name}", "aligned")):
            f = al[key]
            cells = [f"{f['success']:.2f}", f"{f['mean_length']:.1f}",
                     f"{f['mean_length_success']:.1f}" if f["mean_length_success"] is not None else "-",
                     f"{f['violation_rate']:.2f}" if f["violation_rate"] is not None else "-",
                     f"{f['steps_in_zone']:.1f}" if f["steps_in_zone"] is not None else "-"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        ratio = al["violation_ratio_vs_sft"]
        lines += ["", f"Success cost of the alignment: {al['success_cost_vs_sft']:+.2f} against SFT, "
                  f"{al['success_cost_vs_task_objective']:+.2f} against GRAPE with the task costs (positive: lost). "
                  + (f"Violation rate x{ratio:.2f} of SFT's. " if ratio is not None else "")
                  + f"Mean length {al['length_change_vs_sft']:+.1f} steps against SFT."]
        lines += ["", "| task | SFT success / length / violations | task objective | aligned |", "|---|---|---|---|"]
        for e, t in al["per_task"].items():
            cells = [f"{t[k]['success_rate']:.2f} / {t[k]['mean_length']:.0f} / {t[k].get('violation_rate', float('nan')):.2f}"
                     for k in ("sft", "task_objective", "aligned")]
            lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _settings(results: dict) -> str:
    s = results["settings"]
    return (f"K {s['samples_per_task']}, m {s['pairs_per_task']}, TPO lr {s['tpo_lr']:g} x {s['tpo_epochs']} epochs, "
            f"winner NLL weight {s['sft_weight']:g}, λ2 {s['ext_weight']:g}, temperature {s['temperature']:g}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", choices=["task", "safety", "efficiency"])
    p.add_argument("--report", action="store_true")
    p.add_argument("--demos", type=int, default=1)
    p.add_argument("--sft-steps", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--samples", type=int, default=32, help="K trajectories per task and iteration")
    p.add_argument("--samples-per-start", type=int, default=1)
    p.add_argument("--pairs", type=int, default=8, help="m: top-m with bottom-m")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-pairs", type=int, default=8)
    p.add_argument("--sft-weight", type=float, default=1.0)
    p.add_argument("--ext-weight", type=float, default=1.0, help="λ2, the weight of R_ext in the GCPG score")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--eval-episodes", type=int, default=30)
    p.add_argument("--align-tasks", nargs="+", default=["drawer-open", "window-close"])
    p.add_argument("--variant", default="", help="suffix of the run directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/bench_grape")
    a = p.parse_args()
    if a.run:
        run(a)
    if a.report:
        report(a)


if __name__ == "__main__":
    main()
