"""ASAP on arm/track: closed-loop tracking on the "real" twin after fine-tuning in the nominal
sim (vanilla), a SysID sim, a learned residual dynamics sim (DeltaDynamics) and the sim with
the delta action model in the loop (ASAP); open-loop replay errors of each aligned simulator;
and the analytic check (a gain-only twin: learned vs closed-form delta).

    python benchmarks/asap_arm.py --seed 0          # `vlarl train asap` (configs/asap-arm.yaml), one seed
    python benchmarks/asap_arm.py --gain-check      # twin = actuator gain 0.65 only: collect + delta
    python benchmarks/asap_arm.py --sysid-delay     # reference: SysID that also searches the delay (seed 0)
    python benchmarks/asap_arm.py --oracle 0        # reference: fine-tuned on the twin itself (per seed)
    python benchmarks/asap_arm.py --report          # benchmarks/results/asap.{json,md} over every seed run

Runs live in ``--work`` (runs/bench_asap): ``seed<N>``, ``gain`` and ``sysid_delay``. The gain
check reuses seed 0's pretrained policy (pretraining never sees the twin), the SysID reference
seed 0's pretrained policy and real rollouts. Seeds can run side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from vlarl.recipes.asap import VARIANTS, ASAPConfig, train_asap  # noqa: E402
from vlarl.runtime import load_config  # noqa: E402

CONFIG = Path(__file__).parent.parent / "configs" / "asap-arm.yaml"
RESULTS = Path(__file__).parent / "results"
METRICS = ("ee_pos_error", "joint_pos_error", "joint_vel_error", "joint_acc_error")


def config(run_dir: Path, seed: int, overrides: list[str] = ()) -> ASAPConfig:
    return load_config(ASAPConfig, CONFIG, [f"run_dir={run_dir}", f"seed={seed}", *overrides])


def gain_check(work: Path, progress: bool) -> dict:
    """Twin = gain 0.65 alone; seed 0's pretrained policy collects, then the delta model trains."""
    run = work / "gain"
    source = work / "seed0" / "pretrain"
    if not (run / "pretrain" / "results.json").exists():
        if not (source / "results.json").exists():
            raise SystemExit(f"{source} is not finished: run --seed 0 first")
        shutil.copytree(source, run / "pretrain", dirs_exist_ok=True)
    out = {}
    for stage in ("collect", "delta"):
        out = train_asap(config(run, 0, ["twin={actuator_gain: 0.65}", f"stage={stage}"]), progress=progress)
    return out["gain_check"]


def sysid_with_delay(work: Path, progress: bool) -> dict:
    """A reference beside the SysID baseline: seed 0's data, with the action delay added to
    the SysID search (then the twin lies inside its model family)."""
    run = work / "sysid_delay"
    for part in ("pretrain", "real"):
        if not (run / part).exists():
            shutil.copytree(work / "seed0" / part, run / part)
    cfg = config(run, 0, ["sysid.params=[mass,friction,damping,actuator_gain,action_delay]", "variants=[sysid]"])
    return train_asap(cfg, progress=progress)


def oracle(work: Path, seed: int, progress: bool) -> dict:
    """A reference, not a method: the pretrained policy fine-tuned on the twin itself (the same
    PPO budget), i.e. the error fine-tuning could reach with a perfect simulator."""
    from vlarl.envs.twin import TwinConfig
    from vlarl.recipes.asap import REPLAY_SIM, new_policy, policy_env, ppo_stage, tracking_errors

    run = work / f"seed{seed}"
    cfg = config(run, seed)
    twin = TwinConfig.from_dict(cfg.twin)
    policy = new_policy(cfg, cfg.finetune_log_std)
    ppo_stage(run / "oracle", policy, lambda: [policy_env(cfg, twin=twin) for _ in range(cfg.finetune.envs)],
              cfg.finetune, cfg.seed + 5, init=run / "pretrain", init_log_std=cfg.finetune_log_std, progress=progress)
    env = policy_env(cfg, twin=twin, **REPLAY_SIM)
    try:
        out = tracking_errors(policy, env, cfg.eval_episodes, 50_000 + cfg.seed * 1000)
    finally:
        env.close()
    (run / "oracle" / "closed_loop.json").write_text(json.dumps(out, indent=2))
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def report(work: Path) -> dict:
    runs = sorted(p for p in work.glob("seed*") if (p / "results.json").exists())
    if not runs:
        raise SystemExit(f"no finished seed runs in {work}")
    per_seed = {p.name: json.loads((p / "results.json").read_text()) for p in runs}
    first = next(iter(per_seed.values()))
    variants = [v for v in VARIANTS if v in first["closed_loop_pos_error"]]
    closed = {v: {m: _mean_std([r["closed_loop"][v][m] for r in per_seed.values()]) for m in METRICS}
              for v in ["pretrained", *variants]}
    sims = list(first["open_loop_replay"])
    open_loop = {s: {m: _mean_std([r["open_loop_replay"][s][m] for r in per_seed.values()])
                     for m in ("ee_pos_error", "joint_pos_error", "joint_vel_error")} for s in sims}
    pos = {v: closed[v]["ee_pos_error"]["mean"] for v in variants}
    reduction = {v: 1 - pos[v] / pos["vanilla"] for v in variants}
    per_seed_reduction = {name: r["reduction_vs_vanilla"].get("asap") for name, r in per_seed.items()}
    gain_file = work / "gain" / "delta" / "gain_check.json"
    gain = json.loads(gain_file.read_text()) if gain_file.exists() else None
    ref_file = work / "sysid_delay" / "results.json"
    ref = json.loads(ref_file.read_text()) if ref_file.exists() else None
    oracles = [json.loads((p / "oracle" / "closed_loop.json").read_text()) for p in runs
               if (p / "oracle" / "closed_loop.json").exists()]
    results = {
        "closed_loop_pos_error": pos,  # metres, mean over seeds: end-effector position error on the twin
        "closed_loop": closed,
        "closed_loop_reduction_vs_vanilla": reduction,
        "open_loop_replay": open_loop,
        "gain_check": gain,
        "sysid_fits": {name: r["sysid"]["twin"] for name, r in per_seed.items() if "sysid" in r},
        "oracle_finetune_on_twin": {m: _mean_std([o[m] for o in oracles]) for m in METRICS} if oracles else None,
        "sysid_with_delay_seed0": None if ref is None else {
            "fit": ref["sysid"]["twin"], "closed_loop": ref["closed_loop"]["sysid"],
            "open_loop_replay": ref["open_loop_replay"]["sysid"]},
        "twin": first["twin"],
        "target": {"asap_reduction_vs_vanilla_at_least": 0.30,
                   "met_reduction": reduction.get("asap", 0) >= 0.30,
                   "met_below_baselines": all(pos["asap"] < pos[v] for v in ("sysid", "delta_dynamics") if v in pos),
                   "asap_reduction_per_seed": per_seed_reduction},
        "per_seed": per_seed,
        "command": "python benchmarks/asap_arm.py --seed N (N = 0, 1, 2); --gain-check; --sysid-delay; --oracle N; --report",
        "config": str(CONFIG.relative_to(CONFIG.parent.parent)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "asap.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "asap.md").write_text(markdown(results))
    return results


# Exploratory runs, one each, on seed 0's pretrained policy (the settings that led to the
# config; their run folders were not kept). The first three used an earlier delta/residual
# input that included the motion phase (the code no longer offers it).
NOTES = """
## What did not work, and what changed (exploratory runs, seed 0's pretrained policy, one run each)

| settings | ASAP closed-loop ee error (mm) | vanilla | SysID | DeltaDynamics |
|---|---|---|---|---|
| delta sees the motion phase; collect noise 0.05; fine-tune std 0.135; delta 200k steps | 32.3 (+74% vs vanilla) | 18.5 | 3.2 | 6.0 |
| as above, collect noise 0.15, fine-tune std 0.05 | 21.4 (-32%) | 31.5 | 4.1 | 4.0 |
| as above, collect noise 0.1, delta 400k steps | 18.1 (-43%) | 31.5 | 4.3 | 3.7 |
| delta sees joint state, previous command, action (no phase); collect 0.1; std 0.05; delta 200k | 8.2 (-71%) | 28.2 | 4.4 | 4.1 |
| as above, sharper tracking reward (sigma_q 0.002, sigma_qd 0.2) | 11.7 (-59%) | 28.2 | 4.4 | 4.1 |
| as above (default sigmas), delta 500k steps | 5.0 (-82%) | 28.2 | 4.4 | 4.1 |
| as above, delta 1M steps (the config) | 4.8 (-83%) | 28.2 | 4.4 | 4.1 |

In the first run the policy fine-tuned with the delta model in the loop tracked to 3.6 mm in
that simulator and 32.5 mm on the twin: fine-tuning moved it to actions away from the
recorded ones, where the delta model (trained by RL on one motion, with the phase as input)
was wrong, and it exploited the error. The residual model and the SysID simulator predicted
the same policy's twin error closely (29 and 33 mm). Every recording follows the same motion,
so a phase input lets a model memorise corrections per instant; without it, and with
rollout noise that covers fine-tuning's exploration, the delta model generalises.
"""


def markdown(r: dict) -> str:
    ms = lambda d, k: f"{1000 * d[k]['mean']:.1f} ± {1000 * d[k]['std']:.1f}"
    fs = lambda d, k, f=3: f"{d[k]['mean']:.{f}f} ± {d[k]['std']:.{f}f}"
    n = len(r["per_seed"])
    lines = ["# ASAP on arm/track", "",
             f"Real robot = physics twin `{r['twin']}` (read only when collecting real rollouts and deploying). "
             f"Mean ± std over {n} seeds (each: its own pretraining, real rollouts, models and fine-tuning); "
             f"{r['machine']}. Config `{r['config']}`; `{r['command']}`.", "",
             "## Closed-loop tracking on the twin (deployed without any model in the loop)", "",
             "| policy | ee position error (mm) | joint pos (rad) | joint vel (rad/s) | joint acc (rad/s²) | ee error vs vanilla |",
             "|---|---|---|---|---|---|"]
    red = r["closed_loop_reduction_vs_vanilla"]
    for v, row in r["closed_loop"].items():
        vs = f"{-100 * red[v]:+.0f}%" if v in red and v != "vanilla" else ""
        lines.append(f"| {v} | {ms(row, 'ee_pos_error')} | {fs(row, 'joint_pos_error', 4)} | {fs(row, 'joint_vel_error')} "
                     f"| {fs(row, 'joint_acc_error', 2)} | {vs} |")
    if r["oracle_finetune_on_twin"]:
        row = r["oracle_finetune_on_twin"]
        lines.append(f"| *reference: fine-tuned on the twin itself* | {ms(row, 'ee_pos_error')} | "
                     f"{fs(row, 'joint_pos_error', 4)} | {fs(row, 'joint_vel_error')} | {fs(row, 'joint_acc_error', 2)} | |")
    t = r["target"]
    lines += ["", f"Target (ASAP ≥ 30% below vanilla and below SysID and DeltaDynamics): reduction "
              f"{100 * red.get('asap', float('nan')):.0f}% ({'met' if t['met_reduction'] else 'not met'}), below both "
              f"baselines: {'yes' if t['met_below_baselines'] else 'no'}. Per seed: "
              + ", ".join(f"{k} {100 * v:.0f}%" for k, v in t["asap_reduction_per_seed"].items() if v is not None) + ".",
              "", "## Open-loop replay of held-out real rollouts (20-step windows from recorded states)", "",
              "| simulator | ee position error (mm) | joint pos (rad) | joint vel (rad/s) |", "|---|---|---|---|"]
    for s, row in r["open_loop_replay"].items():
        lines.append(f"| {s} | {ms(row, 'ee_pos_error')} | {fs(row, 'joint_pos_error', 4)} | {fs(row, 'joint_vel_error')} |")
    lines += ["", "SysID fits (its family: mass, friction, damping, actuator gain; no delay): "
              + "; ".join(f"{k}: " + ", ".join(f"{p} {v:.2f}" for p, v in fit.items()) for k, fit in r["sysid_fits"].items())]
    if r["sysid_with_delay_seed0"]:
        ref = r["sysid_with_delay_seed0"]
        lines += ["", f"Reference, seed 0 only: SysID with the action delay in its search (the twin then lies in "
                  f"its family) fits {', '.join(f'{p} {v:.2f}' for p, v in ref['fit'].items())}; closed-loop ee error "
                  f"{1000 * ref['closed_loop']['ee_pos_error']:.1f} mm, open-loop replay "
                  f"{1000 * ref['open_loop_replay']['ee_pos_error']:.1f} mm."]
    if r["gain_check"]:
        g = r["gain_check"]
        lines += ["", "## Analytic check: twin actuator gain 0.65 alone", "",
                  f"Closed form: delta* = (g - 1) tau(a) / (KP s), exact for this arm's held PD torque. Over the "
                  f"recorded real states: mean |delta*| {g['mean_abs_ideal']:.4f}, mean |learned| "
                  f"{g['mean_abs_learned']:.4f}, relative gap mean|learned - delta*| / mean|delta*| = "
                  f"{g['relative_gap']:.2f}, correlation {g['correlation']:.3f}."]
    lines += ["", "## What limits ASAP here", "",
              "The arm's dynamics are six-dimensional, smooth and deterministic, so a one-step residual "
              "regressed on 2000 recorded transitions (DeltaDynamics) is the most accurate simulator in open "
              "loop, and a physical fit with the right gain and mass (SysID) is close behind in closed loop "
              "even without the delay. The delta model, trained by PPO on the same data, is less exact "
              "(open-loop error above the residual's) and its policies end within about one standard deviation "
              "of both baselines. The paper's advantage over DeltaDynamics comes from compounding residual "
              "errors in a high-dimensional, contact-rich humanoid, which this arm does not have."]
    return "\n".join(lines) + "\n" + NOTES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, help="run the whole recipe for this seed")
    p.add_argument("--gain-check", action="store_true")
    p.add_argument("--oracle", type=int, metavar="SEED", help="reference: fine-tune seed SEED's policy on the twin")
    p.add_argument("--sysid-delay", action="store_true", help="the SysID reference with the delay in its search")
    p.add_argument("--report", action="store_true")
    p.add_argument("--work", type=Path, default=Path("runs/bench_asap"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.seed is not None:
        t0 = time.perf_counter()
        out = train_asap(config(args.work / f"seed{args.seed}", args.seed), progress=not args.quiet)
        print(json.dumps(out["closed_loop_pos_error"]), f"{time.perf_counter() - t0:.0f} s")
    if args.gain_check:
        print(json.dumps(gain_check(args.work, not args.quiet), indent=2))
    if args.oracle is not None:
        print(json.dumps(oracle(args.work, args.oracle, not args.quiet)))
    if args.sysid_delay:
        print(json.dumps(sysid_with_delay(args.work, not args.quiet)["closed_loop"], indent=2))
    if args.report:
        print((RESULTS / "asap.md").read_text() if report(args.work) else "")


if __name__ == "__main__":
    main()
