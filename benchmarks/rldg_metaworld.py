"""RLDG on Meta-World: a generalist VLA trained on RL specialists' successful episodes vs on
scripted demos, at equal episode counts and at an unequal budget (45 RL episodes vs 300 demos).

    python benchmarks/rldg_metaworld.py --stage specialist --task metaworld/drawer-close   # one per task, in parallel
    python benchmarks/rldg_metaworld.py --stage data --task metaworld/drawer-close         # RL data + demos of a task
    python benchmarks/rldg_metaworld.py --stage generalist --generalist rl:45              # one SFT comparison
    python benchmarks/rldg_metaworld.py --stage all                                        # `vlarl train rldg` itself

Every stage writes where the recipe (``vlarl.recipes.rldg``) looks for it, so the last command
runs the recipe end to end and finds finished stages done; the stages exist only so the
parallel parts can run side by side on a small machine. ``--tasks`` and ``--work`` select
another task set (its run may share the specialists and data folders of another run: same
seeds, same settings). Then ``--report --work RUN [--work RUN ...]`` writes
benchmarks/results/rldg.json (the first run's figures at the top level, every run under
``runs``) and rldg.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

from vlarl.algos.sac import SACConfig  # noqa: E402
from vlarl.recipes.collect import EnvConfig  # noqa: E402
from vlarl.recipes.rldg import (RLDGConfig, _slug, data_dir, demo_data, episodes_per_source,  # noqa: E402
                                generalist_sft, load_specialist, rl_data, train_rldg, train_specialist)
from vlarl.recipes.rlpd import RLPDConfig  # noqa: E402
from vlarl.recipes.sft import SFTConfig  # noqa: E402

TASKS = ["metaworld/drawer-close", "metaworld/handle-press", "metaworld/reach"]
GENERALISTS = ["rl:5", "demos:5", "rl:15", "demos:15", "rl:45", "demos:45", "demos:300", "mix:45"]
RESULTS = Path(__file__).parent / "results"


def config(work: Path, args: argparse.Namespace) -> RLDGConfig:
    # Specialists from state on Meta-World's dense reward, scaled by 0.1 (rewards up to 10 a step
    # learn slowly through LayerNorm critics); episodes run their full length while training
    # (success = any step), and end at success when rolled out for data.
    rlpd = RLPDConfig(env=EnvConfig(obs_mode="state", episode_length=150, options={"terminate_on_success": False}),
                      sac=SACConfig(ensemble=2, subset=2, utd=args.utd, batch_size=256, reward_scale=0.1),
                      steps=args.specialist_steps, eval_every=2500, eval_episodes=20, eval_envs=1, save_every=2500,
                      save_buffer=False)
    return RLDGConfig(tasks=args.tasks, specialist="rlpd", rlpd=rlpd, specialist_demos=10,
                      data_env=EnvConfig(name="", obs_mode="pixels", image_size=84, cameras=["corner"],
                                         episode_length=150),
                      demo_noise=0.1, generalists=GENERALISTS,
                      sft=SFTConfig(steps=args.sft_steps, batch_size=128, lr=3e-4, video_episodes=1),
                      eval_episodes=args.eval_episodes, eval_envs=2, seed=0, run_dir=str(work))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["specialist", "data", "generalist", "all"], default="all")
    p.add_argument("--task", help="for --stage specialist / data")
    p.add_argument("--generalist", help="for --stage generalist, e.g. rl:45")
    p.add_argument("--specialist-steps", type=int, default=20_000)
    p.add_argument("--utd", type=int, default=2)
    p.add_argument("--sft-steps", type=int, default=1500)
    p.add_argument("--eval-episodes", type=int, default=30)
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--work", action="append", help="run directory (default runs/bench_rldg/run); "
                   "--report takes several")
    p.add_argument("--report", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)  # stages run side by side on a 2-core machine
    works = [Path(w) for w in (args.work or ["runs/bench_rldg/run"])]
    if args.report:
        return report(works, args)
    work = works[0]
    cfg = config(work, args)
    if args.stage == "specialist":
        train_specialist(cfg, args.task, work / "specialists")
    elif args.stage == "data":
        need = episodes_per_source(cfg.generalists)
        spec = load_specialist(work / "specialists" / _slug(args.task), cfg.specialist, cfg.data_env)
        print(args.task, "rl", rl_data(cfg, args.task, spec, data_dir(work, "rl", args.task), need["rl"]))
        print(args.task, "demos", demo_data(cfg, args.task, data_dir(work, "demos", args.task), need["demos"]))
    elif args.stage == "generalist":
        from vlarl.recipes.sft import train_sft
        from vlarl.runtime import finish_stage

        finish_stage(train_sft, SFTConfig, generalist_sft(cfg, args.generalist, work))
    else:
        from vlarl.runtime import Run

        resume = Run.resume(work, RLDGConfig, config=cfg) if (work / "config.yaml").exists() else None
        train_rldg(None if resume else cfg, resume=resume)


def report(works: list[Path], args: argparse.Namespace) -> None:
    from vlarl.runtime import load_config

    runs = []
    for work in works:
        cfg = load_config(RLDGConfig, work / "config.yaml")
        results = json.loads((work / "results.json").read_text())
        runs.append({"run": str(work), "tasks": cfg.tasks,
                     "specialist": {"recipe": cfg.specialist, "steps": cfg.rlpd.steps, "utd": cfg.rlpd.sac.utd},
                     "sft_steps": cfg.sft.steps, "eval_episodes": cfg.eval_episodes,
                     **{k: results[k] for k in ("rl_data", "demo_data", "mix_data", "specialists", "data")}})
    doc = {"command": "python benchmarks/rldg_metaworld.py (stages, then --stage all, then --report)",
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d"), **{k: runs[0][k] for k in ("tasks", "rl_data", "demo_data", "mix_data")},
           "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rldg.json").write_text(json.dumps(doc, indent=2))
    header = ["# RLDG on Meta-World", "", "Produced by (each stage line once per task or comparison, run side by side):",
              "", "```", "python benchmarks/rldg_metaworld.py --stage specialist --task TASK",
              "python benchmarks/rldg_metaworld.py --stage data --task TASK",
              "python benchmarks/rldg_metaworld.py --stage generalist --generalist rl:45   # and the others",
              "python benchmarks/rldg_metaworld.py --stage all", "# the 4-task run: the same with --work runs/bench_rldg/run4 "
              "--tasks ... (specialists and data folders shared)",
              "# the longer-specialist run (runs/bench_rldg/long): the reach and button-press-topdown specialists",
              "# copied and resumed to 40k env steps (vlarl train rlpd --resume DIR steps=40000; the online buffer",
              "# was not saved, so it restarts empty), their RL data collected anew; the other specialists, data",
              "# and the demo generalists shared with runs/bench_rldg/run4",
              "python benchmarks/rldg_metaworld.py --report " + " ".join(f"--work {r['run']}" for r in runs), "```", ""]
    text = "\n".join(header) + "\n" + "\n".join(markdown(r, doc["machine"]) for r in runs)
    (RESULTS / "rldg.md").write_text(text)
    print(text)


def markdown(doc: dict, machine: str) -> str:
    lines = [f"## {len(doc['tasks'])} tasks: generalist on RL-specialist data vs on scripted demos",
             "", f"{machine}. Run `{doc['run']}`. Tasks: {', '.join(doc['tasks'])}. Specialists: {doc['specialist']['recipe']} from "
             f"state, {'/'.join(str(s.get('env_steps')) for s in doc['specialists'].values())} env steps "
             f"(UTD {doc['specialist']['utd']}); generalist: the "
             f"Step 2 VLA (frozen EfficientNet-Lite0, corner camera 84 px), SFT {doc['sft_steps']} steps; "
             f"{doc['eval_episodes']} evaluation episodes per task on the same start states.", "",
             "| data | episodes per task | mean success | mean episode length | per task (success / length) |",
             "|---|---|---|---|---|"]
    for key, label in (("rl_data", "RL specialists"), ("demo_data", "scripted demos"), ("mix_data", "mix")):
        for n, r in sorted(doc[key].items(), key=lambda kv: int(kv[0])):
            per = ", ".join(f"{t.split('/')[-1]} {v['success']:.2f} / {v['episode_length']:.0f}"
                            for t, v in r["per_task"].items())
            lines.append(f"| {label} | {n} | {r['success']:.2f} | {r['episode_length']:.1f} | {per} |")
    lines += ["", "Target: the RL-data generalist matches or beats the demo-data one, with shorter episodes.", "",
              "| RL episodes | demo episodes | success RL / demos | episode length RL / demos | met |", "|---|---|---|---|---|"]
    pairs = [(n, n) for n in doc["rl_data"] if n in doc["demo_data"]]
    pairs += [(n, m) for n in doc["rl_data"] for m in doc["demo_data"] if int(m) > int(n) and m not in doc["rl_data"]]
    for n, m in sorted(pairs, key=lambda p: (int(p[1]), int(p[0]))):
        rl, demo = doc["rl_data"][n], doc["demo_data"][m]
        met = rl["success"] >= demo["success"] and rl["episode_length"] < demo["episode_length"]
        lines.append(f"| {n} | {m} | {rl['success']:.2f} / {demo['success']:.2f} | "
                     f"{rl['episode_length']:.1f} / {demo['episode_length']:.1f} | {'yes' if met else 'no'} |")
    lines += ["", "The same per task (success RL / demos, episode length RL / demos; met: RL success >= demos' and "
              "shorter episodes):", "", "| task | specialist success | " + " | ".join(f"{n} vs {m}" for n, m in
              sorted(pairs, key=lambda p: (int(p[1]), int(p[0])))) + " |", "|---|---|" + "---|" * len(pairs)]
    for task in doc["tasks"]:
        cells = []
        for n, m in sorted(pairs, key=lambda p: (int(p[1]), int(p[0]))):
            rl, demo = doc["rl_data"][n]["per_task"][task], doc["demo_data"][m]["per_task"][task]
            met = rl["success"] >= demo["success"] and rl["episode_length"] < demo["episode_length"]
            cells.append(f"{rl['success']:.2f} / {demo['success']:.2f}, {rl['episode_length']:.0f} / "
                         f"{demo['episode_length']:.0f} {'yes' if met else 'no'}")
        lines.append(f"| {task.split('/')[-1]} | {doc['specialists'][task].get('success')} | " + " | ".join(cells) + " |")
    lines += ["", "Data (successful episodes only):", "", "| task | source | episodes | attempts | success rate | "
              "mean length |", "|---|---|---|---|---|---|"]
    for task, row in doc["data"].items():
        for source, d in row.items():
            lines.append(f"| {task} | {source} | {d['episodes']} | {d['attempts']} | {d['success_rate']:.2f} | "
                         f"{d['mean_length']:.1f} |")
    lines += ["", "Specialists (their own evaluation, episodes run the full 150 steps, success at any step):", ""]
    for task, s in doc["specialists"].items():
        lines.append(f"- {task}: success {s.get('success')} after {s.get('env_steps')} env steps (20 episodes)")
    unused = _unused_specialists(Path(doc["run"]) / "specialists", doc["specialists"])
    if unused:
        lines += ["", "Other specialists in the shared folder, trained with the same settings (not in this run's tasks):", ""]
        lines += [f"- {name}: success {s['success']} after {s['env_steps']} env steps" for name, s in unused.items()]
    return "\n".join(lines) + "\n"


def _unused_specialists(root: Path, used: dict) -> dict:
    from vlarl.recipes.rldg import _specialist_summary

    used_dirs = {Path(s["run"]).name for s in used.values()}
    return {d.name: _specialist_summary(d / "results.json") for d in sorted(root.glob("*_*"))
            if (d / "results.json").exists() and d.name not in used_dirs}


if __name__ == "__main__":
    main()
