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
the machine (the baseline waits for the shared SFT policy); a last run without work left
writes benchmarks/results/ire_vla.json and .md.
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
    runs = {m: work / m / "results.json" for m in ("ire-vla", "whole-model-ppo")}
    if all(r.exists() for r in runs.values()):
        write({m: json.loads(r.read_text()) for m, r in runs.items()}, args)


def _iterations(run_dir: Path) -> int:
    from vlarl.recipes.ire_vla import IReVLAConfig
    from vlarl.runtime import load_config

    return load_config(IReVLAConfig, run_dir / "config.yaml").iterations


def write(res: dict, args: argparse.Namespace) -> None:
    ire, base = res["ire-vla"], res["whole-model-ppo"]
    per_task = {}
    for env in ire["per_task"]:
        a, b = ire["per_task"][env], base["per_task"][env]
        per_task[env] = {"before": a["before"], "before_ci95": a["before_ci95"],
                         "ire_vla": a["after"], "ire_vla_ci95": a["after_ci95"],
                         "whole_model_ppo": b["after"], "whole_model_ppo_ci95": b["after_ci95"],
                         "delta": a["delta"], "delta_whole_model_ppo": b["delta"]}
    doc = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "setup": {"tasks": [f"metaworld/{t}" for t in TASKS], "env": ENV, "demos_per_task": args.demos,
                  "sft_steps": args.sft_steps, "rl_env_steps_per_task": args.rl_steps, "ppo_lr": args.ppo_lr,
                  "sl_steps": args.sl_steps, "eval_episodes": args.eval_episodes},
        "per_task": per_task,
        "tasks_improved": ire["tasks_improved"],
        "tasks_improved_whole_model_ppo": base["tasks_improved"],
        "mean_success": {"sft": ire["mean_before"], "ire_vla": ire["mean_after"], "whole_model_ppo": base["mean_after"]},
        "forgetting": {"ire_vla": ire["forgetting"], "whole_model_ppo": base["forgetting"]},
        "max_forgetting": {"ire_vla": ire["max_forgetting"], "whole_model_ppo": base["max_forgetting"]},
        "d_rl_ratio": ire["d_rl_ratio"],
        "rl_train_success": {m: [(s["tasks"][0], round(s["train_success"], 3)) for s in r["stages"] if s["kind"] == "rl"]
                             for m, r in res.items()},
        "freeze_checks": ire["freeze_checks"],
        "rl_env_steps": {m: r["rl_env_steps"] for m, r in res.items()},
        "wall_minutes": {m: r["wall_seconds"] / 60 for m, r in res.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ire_vla.json").write_text(json.dumps(doc, indent=2))
    lines = ["# iRe-VLA on five Meta-World tasks (pixels), from a low-data SFT policy", "",
             f"`{doc['command']}` on {doc['machine']}. SFT on {args.demos} scripted demo(s) per task; then per task "
             f"{args.rl_steps} env steps of PPO (sparse success reward) and, for iRe-VLA, {args.sl_steps} supervised "
             f"steps on the demos plus successful RL episodes. {args.eval_episodes} evaluation episodes per task, "
             "95% Wilson intervals.", "",
             "| task | SFT | iRe-VLA | PPO on the whole model |", "|---|---|---|---|"]
    for env, t in per_task.items():
        def cell(v, ci):
            return f"{v:.2f} ({ci[0]:.2f}-{ci[1]:.2f})"
        lines.append(f"| {env} | {cell(t['before'], t['before_ci95'])} | {cell(t['ire_vla'], t['ire_vla_ci95'])} | "
                     f"{cell(t['whole_model_ppo'], t['whole_model_ppo_ci95'])} |")
    m = doc["mean_success"]
    lines.append(f"| **mean** | **{m['sft']:.2f}** | **{m['ire_vla']:.2f}** | **{m['whole_model_ppo']:.2f}** |")
    lines += ["", f"Tasks improved by >= 0.2: iRe-VLA {doc['tasks_improved']} / 5, whole-model PPO "
              f"{doc['tasks_improved_whole_model_ppo']} / 5.",
              f"Forgetting (largest drop from a task's success right after its own stage to the end): "
              f"iRe-VLA {doc['max_forgetting']['ire_vla']:.2f}, whole-model PPO {doc['max_forgetting']['whole_model_ppo']:.2f}.",
              f"|D_RL| / |D_e| (episodes) after each supervised stage: {', '.join(f'{r:.1f}' for r in doc['d_rl_ratio'])}.",
              f"Wall clock: iRe-VLA {doc['wall_minutes']['ire-vla']:.1f} min, baseline "
              f"{doc['wall_minutes']['whole-model-ppo']:.1f} min (both on the same 2 cores)."]
    (RESULTS / "ire_vla.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
