"""ConRFT at small scale: SFT (consistency BC) vs offline ConRFT vs online ConRFT.

    python benchmarks/conrft_bench.py --env panda/pick-cube [--online-steps 15000]
    python benchmarks/conrft_bench.py --env metaworld/drawer-open
    python benchmarks/conrft_bench.py --report      # merge the per-env parts into conrft.{json,md}

Per env, from state observations, 20 scripted demos (noise 0.1) recorded through the same
wrappers (reward shaped as ConRFT's: +10 success, -0.05 a step, -0.2 a gripper toggle):

- ``sft``: the same consistency head trained by behaviour cloning alone (eta = 0) for the
  same number of offline updates; no env steps.
- ``offline``: Cal-QL critic + consistency actor (-0.1 Q + 1.0 BC) on the demos.
- ``online``: the offline run continued on the HIL-SERL runtime (one actor process beside
  the learner, simulated human whose budget decays over the first half of the online
  steps), actor loss -Q + beta BC with beta decaying linearly 0.5 -> ``--beta-end``.

Every figure is the policy alone (no human) over the same 50 start states: success (the
env's own check) and mean episode length (episodes end at success; a failure counts the
full length). Each env's part is cached under ``--work``; results go to
benchmarks/results/conrft.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

RESULTS = Path(__file__).parent / "results"
ENVS = {  # per env: episode length, end-effector-relative frame (needs ee_pose)
    "panda/pick-cube": {"episode_length": 100, "relative_frame": True},
    "metaworld/drawer-open": {"episode_length": 150, "relative_frame": False},
}


def overrides(env: str, run_dir: Path, a: argparse.Namespace) -> list[str]:
    spec = ENVS[env]
    return [f"env.name={env}", "env.obs_mode=state", f"env.episode_length={spec['episode_length']}",
            f"relative_frame={str(spec['relative_frame']).lower()}", f"demos={a.demos}", "demo_noise=0.1",
            f"offline_steps={a.offline_steps}", f"final_eval_episodes={a.eval_episodes}",
            f"eval_episodes={a.curve_episodes}", f"eval_every={a.eval_every}", "video=false",
            f"sim_human.decay_steps={a.online_steps // 2}", f"conrft.beta_schedule.steps={a.online_steps}",
            f"conrft.beta_schedule.end={a.beta_end}", f"seed={a.seed}", f"run_dir={run_dir}", "learner_threads=1",
            f"control_hz={a.control_hz}", *a.set]


def run_env(env: str, a: argparse.Namespace) -> dict:
    import torch

    from vlarl.recipes.conrft import ConRFTRecipeConfig, train_conrft
    from vlarl.runtime import Run, load_config

    work = Path(a.work) / (env.replace("/", "_") + (f"-seed{a.seed}" if a.seed else ""))
    part = work / "part.json"
    if part.exists():
        return json.loads(part.read_text())
    torch.set_num_threads(1)
    out: dict = {"env": env, "seed": a.seed}
    sft_dir = work / "sft"
    if not (sft_dir / "results.json").exists() or "summary" not in json.loads((sft_dir / "results.json").read_text()):
        t = time.perf_counter()
        r = train_conrft(load_config(ConRFTRecipeConfig, None, overrides(env, sft_dir, a) + [
            "conrft.eta_offline=0", "steps=0", "runtime=inprocess"]), progress=False)
        out["sft_wall_min"] = (time.perf_counter() - t) / 60
    sft = json.loads((sft_dir / "results.json").read_text())
    out["sft"] = {"success": sft["final_success"], "ci95": sft["final_ci95"], "episode_length": sft["final_mean_length"]}
    run_dir = work / "conrft"
    t = time.perf_counter()
    if (run_dir / "config.yaml").exists():  # continue (or an offline stage copied in): same settings
        r = train_conrft(resume=Run.resume(run_dir, ConRFTRecipeConfig, overrides(env, run_dir, a) + [
            f"steps={a.online_steps}"]), progress=False)
    else:
        r = train_conrft(load_config(ConRFTRecipeConfig, None, overrides(env, run_dir, a) + [
            f"steps={a.online_steps}"]), progress=False)
    out["conrft_wall_min"] = r["wall_clock_min"]
    out["offline"] = {"success": r["offline"]["success"], "ci95": r["offline"]["ci95"],
                      "episode_length": r["offline"]["mean_length"]}
    out["online"] = {"success": r["final_success"], "ci95": r["final_ci95"], "episode_length": r["final_mean_length"],
                     "env_steps": r["env_steps"], "updates": r["updates"],
                     "intervention_rate": r["intervention_rate"]}
    out["curve"] = [{"step": e["step"], "success": e["success"], "episode_length": e["mean_length"]}
                    for e in r["evals"]]
    out["demo_success_rate"] = r["demo_success_rate"]
    out["settings"] = {k: getattr(a, k) for k in ("demos", "offline_steps", "online_steps", "beta_end",
                                                  "eval_episodes", "seed", "set")}
    part.write_text(json.dumps(out, indent=2))
    return out


def report(a: argparse.Namespace) -> None:
    parts = [json.loads(p.read_text()) for p in sorted(Path(a.work).glob("*/part.json"))]
    methods = ("sft", "offline", "online")
    envs = sorted({p["env"] for p in parts})

    def mean(env: str, method: str, key: str) -> float:  # over the seeds run for this env
        values = [p[method][key] for p in parts if p["env"] == env]
        return sum(values) / len(values)

    result = {
        "final_success": {e: {m: mean(e, m, "success") for m in methods} for e in envs},
        "episode_length": {e: {m: mean(e, m, "episode_length") for m in methods} for e in envs},
        "seeds": {e: [p.get("seed", 0) for p in parts if p["env"] == e] for e in envs},
        "targets": {"online_success": 0.9, "online_shorter_than_sft": True},
        "met": {e: {"online_success_ge_0.9": mean(e, "online", "success") >= 0.9,
                    "online_shorter_than_sft": mean(e, "online", "episode_length") < mean(e, "sft", "episode_length")}
                for e in envs},
        "runs": parts,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "commands": ["python benchmarks/conrft_bench.py --env panda/pick-cube " + a.cmd_note,
                     "python benchmarks/conrft_bench.py --env metaworld/drawer-open " + a.cmd_note,
                     "python benchmarks/conrft_bench.py --report"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "conrft.json").write_text(json.dumps(result, indent=2))
    lines = ["# ConRFT: SFT vs offline vs online (state observations, 20 demos, 2 CPU cores)", "",
             "| env | SFT success | offline | online | SFT length | offline | online | online env steps | "
             "interventions | wall (min) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in parts:
        lines.append(
            f"| {p['env']} (seed {p.get('seed', 0)}) | " + " | ".join(f"{p[m]['success']:.2f}" for m in methods) + " | "
            + " | ".join(f"{p[m]['episode_length']:.1f}" for m in methods)
            + f" | {p['online']['env_steps']} | {p['online']['intervention_rate']:.3f} | {p['conrft_wall_min']:.0f} |")
    if any(len(v) > 1 for v in result["seeds"].values()):
        lines += ["", "Mean over seeds (the figures in conrft.json):", "", "| env | seeds | SFT success | offline | "
                  "online | SFT length | offline | online |", "|---|---|---|---|---|---|---|---|"]
        for e in envs:
            lines.append(f"| {e} | {len(result['seeds'][e])} | "
                         + " | ".join(f"{result['final_success'][e][m]:.2f}" for m in methods) + " | "
                         + " | ".join(f"{result['episode_length'][e][m]:.1f}" for m in methods) + " |")
    s = parts[0]["settings"] if parts else {}
    lines += ["", f"Settings: {s.get('demos')} scripted demos, {s.get('offline_steps')} offline updates (Cal-QL + "
              f"consistency BC), {s.get('online_steps')} online env steps with the actor paced at 10 Hz beside the "
              f"learner (one update per env step), beta 0.5 -> {s.get('beta_end')}, Q term normalised by mean |Q|, "
              "simulated human (its budget decays over the first half; the column is the share of steps it drove).",
              "", "Online curve, success / mean episode length (policy alone; step 0 = after the offline stage and "
              "the last point are the 50-episode evaluations, the others 20 episodes):", ""]
    for p in parts:
        lines.append(f"- {p['env']} (seed {p.get('seed', 0)}): " + ", ".join(f"{c['step']}: {c['success']:.2f} / {c['episode_length']:.1f}"
                                                  for c in p["curve"]))
    lines += ["", "Success over the same 50 start states per env (95% Wilson intervals in conrft.json), the "
              "policy alone; episode length counts a failure as the full episode. Targets: online success "
              ">= 0.9 and shorter episodes than SFT.", "", "```", *result["commands"], "```"]
    (RESULTS / "conrft.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=list(ENVS))
    p.add_argument("--report", action="store_true")
    p.add_argument("--demos", type=int, default=20)
    p.add_argument("--offline-steps", type=int, default=2000)
    p.add_argument("--online-steps", type=int, default=15000)
    p.add_argument("--beta-end", type=float, default=0.2)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--curve-episodes", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control-hz", type=float, default=10.0, help="actor pace (a real arm's control rate)")
    p.add_argument("--set", nargs="*", default=[], help="extra recipe overrides")
    p.add_argument("--work", default="runs/bench_conrft")
    p.add_argument("--cmd-note", default="", help="flags to record beside the commands in the report")
    a = p.parse_args()
    if a.report:
        report(a)
    elif a.env:
        print(json.dumps(run_env(a.env, a), indent=2))
    else:
        p.error("--env or --report")


if __name__ == "__main__":
    main()
