"""iRe-VLA on the five Meta-World tasks of the SFT benchmark, from a low-data SFT policy,
beside the "PPO on the whole model" baseline with the same RL budget.

    python benchmarks/ire_vla_metaworld.py [--demos 1] [--sft-steps 1000] [--rl-steps 4096]
        [--methods ire-vla whole-model-ppo] [--eval-episodes 20]

Both methods start from the same SFT policy (stage 0 of the iRe-VLA run; ``--demos``
scripted pixel demos per task, corner camera 84 px, 150-step episodes). Per task in turn:
iRe-VLA runs PPO on the action head (+ value head) with a sparse success reward, then
behaviour cloning of adapter + head on the demos and all successful RL episodes; the
baseline runs the same PPO with the adapter trainable too and no supervised stage. Each
task is evaluated right after its own stage and every task at the end (forgetting).

Finished method runs are reused, so two processes with different ``--methods`` can share
the machine (the baseline waits for the shared SFT policy); every finished run and pass is
merged into benchmarks/results/ire_vla.json and .md. The committed figures come from:

    python benchmarks/ire_vla_metaworld.py --methods ire-vla --rl-steps 8192 --eval-episodes 30
    python benchmarks/ire_vla_metaworld.py --methods whole-model-ppo --rl-steps 8192 --eval-episodes 30  # beside it
    python benchmarks/ire_vla_metaworld.py --methods ire-vla --variant=-balanced --balance-tasks \
        --rl-steps 8192 --eval-episodes 30
    python benchmarks/ire_vla_metaworld.py --methods ire-vla --variant=-balanced-explore --balance-tasks \
        --init-log-std -0.7 --ppo-lr 1e-3 --rl-steps 8192 --eval-episodes 30   # alone on the machine
    python benchmarks/ire_vla_metaworld.py --methods ire-vla --iterations 2 --rl-steps 8192 --eval-episodes 30

(the first run's supervised stage draws frames uniformly, the recipe's old default; the
recipe now balances tasks, as the "-balanced" run does).
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
ENV = dict(obs_mode="pixels", image_size=84, cameras=["corner"], episode_length=150)


def main() -> None:
    import torch

    from vlarl.algos.ppo import PPOConfig
    from vlarl.models.policy import PolicyConfig
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
    from vlarl.recipes.ire_vla import IReVLAConfig, RLStageConfig, SLStageConfig, train_ire_vla
    from vlarl.recipes.sft import SFTConfig

    p = argparse.ArgumentParser()
    p.add_argument("--demos", type=int, default=1, help="scripted demos per task for the SFT start")
    p.add_argument("--sft-steps", type=int, default=1000)
    p.add_argument("--rl-steps", type=int, default=4096, help="env steps per RL stage (one stage per task)")
    p.add_argument("--ppo-lr", type=float, default=3e-4)
    p.add_argument("--sl-steps", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--methods", nargs="+", default=["ire-vla", "whole-model-ppo"])
    p.add_argument("--init-log-std", type=float, default=-1.6, help="PPO exploration: log-std around the head")
    p.add_argument("--iterations", type=int, default=1, help="passes over the five tasks")
    p.add_argument("--variant", default="", help="suffix of the run directories (a second configuration)")
    p.add_argument("--balance-tasks", action="store_true", help="supervised stage draws tasks equally")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--work", default="runs/bench_ire_vla")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    datasets = []
    for task in TASKS:  # the SFT benchmark's demos (same settings and seed); collected if missing
        out = Path("runs/bench_sft/data") / task
        if not (out / "meta" / "episodes.jsonl").exists():
            collect(CollectConfig(env=EnvConfig(name=f"metaworld/{task}", **ENV), episodes=max(args.demos, 5), noise=0.1,
                                  workers=2, seed=0, out=str(out)))
        datasets.append(str(out))
    sft_dir = work / "ire-vla" / "sft"
    for method in args.methods:
        run_dir = work / (method + args.variant)
        if (run_dir / "results.json").exists() and _iterations(run_dir) >= args.iterations:
            continue
        shared_start = run_dir != work / "ire-vla"
        if shared_start:  # the baseline and variants start from the first iRe-VLA run's stage 0
            while not (sft_dir / "results.json").exists():
                time.sleep(20)
        cfg = IReVLAConfig(
            sft=SFTConfig(datasets=datasets, episodes_per_dataset=args.demos, policy=PolicyConfig(),
                          steps=args.sft_steps, batch_size=128, lr=3e-4, save_every=10_000),
            sft_run=str(sft_dir) if shared_start else None,
            tasks=[f"metaworld/{t}" for t in TASKS], mode=method,
            iterations=args.iterations,
            rl=RLStageConfig(steps=args.rl_steps, num_envs=2, rollout_steps=256,
                             ppo=PPOConfig(lr=args.ppo_lr, init_log_std=args.init_log_std)),
            sl=SLStageConfig(steps=args.sl_steps, balance_tasks=args.balance_tasks), eval_episodes=args.eval_episodes, eval_envs=2,
            eval_after_stage="trained", video_episodes=1, run_dir=str(run_dir))
        from vlarl.runtime import Run

        if (run_dir / "results.json").exists():  # keep the figures of the passes done so far
            done = _iterations(run_dir)
            (run_dir / f"results_{done}_iterations.json").write_text((run_dir / "results.json").read_text())
        resume = Run.resume(run_dir, IReVLAConfig, [f"iterations={args.iterations}"]) \
            if (run_dir / "checkpoints").exists() else None
        train_ire_vla(None if resume else cfg, resume=resume)
    collect_results(work, args)


def _iterations(run_dir: Path) -> int:
    from vlarl.recipes.ire_vla import IReVLAConfig
    from vlarl.runtime import load_config

    return load_config(IReVLAConfig, run_dir / "config.yaml").iterations


VARIANTS = {  # run directory -> label; a run that has not been made is left out
    "ire-vla": "iRe-VLA",
    "ire-vla-balanced": "iRe-VLA, task-balanced SL",
    "ire-vla-balanced-explore": "iRe-VLA, task-balanced SL, PPO std 0.5 lr 1e-3",
    "whole-model-ppo": "PPO on the whole model",
}


def collect_results(work: Path, args: argparse.Namespace) -> None:
    """Merge the finished runs (and the saved figures of earlier passes) into ire_vla.json/.md."""
    runs: dict[str, dict] = {}
    for name in VARIANTS:
        d = work / name
        for earlier in sorted(d.glob("results_*_iterations.json")):
            runs[f"{name}@{earlier.stem.split('_')[1]}"] = json.loads(earlier.read_text())
        if (d / "results.json").exists():
            runs[f"{name}@{_iterations(d)}"] = json.loads((d / "results.json").read_text())
    if "ire-vla@1" in runs and "whole-model-ppo@1" in runs:
        write(runs, args, first_update_kl={name: _first_kl(work / name) for name in VARIANTS})


def _first_kl(run_dir: Path) -> float | None:
    """PPO's approximate KL over the first update of the first RL stage (how far one update moves the policy)."""
    curve = run_dir / "rl_curve_stage01.json"
    return json.loads(curve.read_text())[0]["ppo/approx_kl"] if curve.exists() else None


def _label(key: str) -> str:
    name, passes = key.split("@")
    return VARIANTS[name] + (f" ({passes} passes)" if passes != "1" else "")


def write(runs: dict[str, dict], args: argparse.Namespace, first_update_kl: dict[str, float | None]) -> None:
    # the headline is the recipe's default (task-balanced supervised stage) when it has been run
    headline = "ire-vla-balanced@1" if "ire-vla-balanced@1" in runs else "ire-vla@1"
    head = runs[headline]
    per_task = {}
    for env in head["per_task"]:
        h = head["per_task"][env]
        t = {"before": h["before"], "before_ci95": h["before_ci95"], "after": h["after"], "after_ci95": h["after_ci95"]}
        for key, r in runs.items():
            p = r["per_task"][env]
            t[key] = {"after": p["after"], "after_ci95": p["after_ci95"], "delta": p["delta"],
                      "mean_length": p["mean_length_after"]}
        per_task[env] = t
    doc = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "setup": {"tasks": [f"metaworld/{t}" for t in TASKS], "env": ENV, "demos_per_task": args.demos,
                  "sft_steps": args.sft_steps, "rl_env_steps_per_task_and_pass": args.rl_steps,
                  "ppo_lr": args.ppo_lr, "ppo_init_log_std": args.init_log_std, "sl_steps": args.sl_steps,
                  "eval_episodes": args.eval_episodes},
        "runs": {key: _label(key) for key in runs},
        "headline": headline,
        "per_task": per_task,
        "tasks_improved": head["tasks_improved"],
        "tasks_improved_by_run": {key: r["tasks_improved"] for key, r in runs.items()},
        "mean_success": {"sft": head["mean_before"], **{key: r["mean_after"] for key, r in runs.items()}},
        "forgetting": {key: r["forgetting"] for key, r in runs.items()},
        "max_forgetting": {key: r["max_forgetting"] for key, r in runs.items()},
        "d_rl_ratio": {key: r["d_rl_ratio"] for key, r in runs.items() if r["d_rl_ratio"]},
        "rl_train_success": {key: [(s["tasks"][0], round(s["train_success"], 3)) for s in r["stages"]
                                   if s["kind"] == "rl"] for key, r in runs.items()},
        "d_rl_episodes": {key: [(s["tasks"][0], s["d_rl_episodes"]) for s in r["stages"] if s["kind"] == "rl"]
                          for key, r in runs.items()},
        "freeze_checks_passed": {key: all(c["bit_identical"] and c["no_grad"] for c in r["freeze_checks"])
                                 for key, r in runs.items()},
        "rl_env_steps": {key: r["rl_env_steps"] for key, r in runs.items()},
        "wall_minutes": {key: r["wall_seconds"] / 60 for key, r in runs.items()},
        "first_update_approx_kl": first_update_kl,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ire_vla.json").write_text(json.dumps(doc, indent=2))

    def cell(v: float, ci: list) -> str:
        return f"{v:.2f} ({ci[0]:.2f}-{ci[1]:.2f})"

    keys = list(runs)
    lines = ["# iRe-VLA on five Meta-World tasks (pixels), from a low-data SFT policy", "",
             f"`{doc['command']}` on {doc['machine']}. SFT on {args.demos} scripted demo(s) per task; then, per "
             f"task and pass, {args.rl_steps} env steps of PPO (sparse success reward) and, for iRe-VLA, "
             f"{args.sl_steps} supervised steps on the demos plus all successful RL episodes so far. "
             f"{args.eval_episodes} evaluation episodes per task (the same start states in every column), "
             f"95% Wilson intervals. Headline (the recipe's default): {_label(headline)}.", "",
             "| task | SFT | " + " | ".join(_label(k) for k in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for env, t in per_task.items():
        lines.append(f"| {env} | {cell(t['before'], t['before_ci95'])} | "
                     + " | ".join(cell(t[k]["after"], t[k]["after_ci95"]) for k in keys) + " |")
    m = doc["mean_success"]
    lines.append(f"| **mean** | **{m['sft']:.2f}** | " + " | ".join(f"**{m[k]:.2f}**" for k in keys) + " |")
    lines.append("| tasks improved by >= 0.2 | | " + " | ".join(str(doc["tasks_improved_by_run"][k]) for k in keys) + " |")
    lines.append("| largest forgetting | | " + " | ".join(f"{doc['max_forgetting'][k]:.2f}" for k in keys) + " |")
    lines.append("| RL env steps | | " + " | ".join(f"{doc['rl_env_steps'][k]:,}" for k in keys) + " |")
    lines += ["", "Forgetting: the drop from a task's success right after its own stage to its success at the end.",
              "", "Successful RL episodes kept (D_RL) per RL stage, and |D_RL| / |D_e| after each supervised stage:", ""]
    for k in keys:
        eps = ", ".join(f"{e.split('/')[1]} {n}" for e, n in doc["d_rl_episodes"][k])
        ratio = ", ".join(f"{x:.1f}" for x in doc["d_rl_ratio"].get(k, []))
        lines.append(f"- {_label(k)}: {eps}" + (f"; ratio {ratio}" if ratio else ""))
    kl = {k: v for k, v in first_update_kl.items() if v is not None}
    lines += ["", "PPO's approximate KL over its first update (first task): "
              + ", ".join(f"{VARIANTS[k]} {v:.3f}" for k, v in kl.items()) + "."]
    lines += ["", "Wall clock (stages after SFT, minutes, runs sharing 2 cores): "
              + ", ".join(f"{_label(k)} {doc['wall_minutes'][k]:.0f}" for k in keys) + "."]
    (RESULTS / "ire_vla.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
