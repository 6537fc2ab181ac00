"""The main job on its embedded default: HIL-SERL on the Panda pick-cube sim from its cameras.

``recipe: hil-serl`` (the default) learns to pick up the cube from the front and wrist cameras
(128 px) and the arm's proprio, with no cube position in any input: it records 20 scripted
demos, starts an actor process beside the SAC learner (the frozen EfficientNet-Lite0 encodes
each frame once on the actor; the learner trains only its head, the critics and the actor),
and lets a simulated human take over when the policy heads the wrong way, less and less over
the first 3k steps. The reward is the env's own success (no classifier stage). It ends with
the policy's success on its own before and after, a plot of success and intervention rate
against env steps, and a video. About ten minutes on two CPU cores. The same recipe on the
2-D reach task from state is ``vlarl demo --config configs/demo-reach.yaml`` (three minutes).

``recipe: sft`` (``vlarl demo --config configs/demo-sft.yaml``) is the SFT pipeline:

1. collects scripted pixel demos (two worker processes) into a dataset;
2. trains a language-conditioned VLA policy on them (frozen EfficientNet-Lite0 with cached
   tokens, TokenLearner trunk, MiniLM instruction);
3. evaluates it over parallel envs and writes a success table with 95% intervals, the
   training curve and a video. A few minutes on two CPU cores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlarl.data import EpisodeDataset
from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
from vlarl.recipes.hil_serl import HILSERLConfig, train_hil_serl
from vlarl.recipes.sft import SFTConfig, train_sft
from vlarl.runtime import Run
from vlarl.runtime.config import check_ranges, ranged


def _default_collect() -> CollectConfig:
    env = EnvConfig(name="metaworld/drawer-open", obs_mode="pixels", image_size=84, cameras=["corner"],
                    episode_length=150)
    return CollectConfig(env=env, episodes=20, noise=0.1, workers=2)


def _default_sft() -> SFTConfig:
    return SFTConfig(steps=1500, batch_size=64, eval_episodes=10, eval_envs=2, save_every=500, log_every=50,
                     video_episodes=2)


def _default_hil_serl() -> HILSERLConfig:
    env = EnvConfig(name="panda/pick-cube", obs_mode="pixels", image_size=128, cameras=["front", "wrist"],
                    episode_length=100)
    cfg = HILSERLConfig(env=env, demos=20, reward="env", human="sim", relative_frame=True, steps=DEMO_STEPS,
                        eval_every=DEMO_STEPS // 2, eval_episodes=10, final_eval_episodes=20,
                        save_every=DEMO_STEPS // 2)
    cfg.sim_human.decay_steps = 3_000
    return cfg


DEMO_STEPS = 7_000


@dataclass
class DemoConfig:
    recipe: str = ranged("hil-serl", choices=("hil-serl", "sft"))
    hil_serl: HILSERLConfig = field(default_factory=_default_hil_serl)
    collect: CollectConfig = field(default_factory=_default_collect)
    sft: SFTConfig = field(default_factory=_default_sft)
    run_dir: str = "runs/demo"


def run_demo(cfg: DemoConfig | None = None, progress: bool = True, resume: Run | None = None) -> dict[str, Any]:
    """Run the demo; with ``resume`` (a reopened demo run) continue where it stopped."""
    check_ranges(cfg, "demo")  # before a run directory is made
    if resume is None and cfg is not None and cfg.recipe == "hil-serl":
        _check_same_demo(Path(cfg.run_dir) / "hil-serl", cfg.hil_serl)  # before anything there is rewritten
    run, cfg = Run.start(cfg, resume, exist_ok=True)
    if cfg.recipe == "hil-serl":
        return _hil_serl_demo(run, cfg, progress)
    root = run.path
    with run:
        cfg.collect.out = str(root / "dataset")
        cfg.sft.datasets = [cfg.collect.out]
        cfg.sft.run_dir = str(root / "sft")
        collected = collect(cfg.collect, progress=progress)
        data = EpisodeDataset(cfg.collect.out)
        sft_run = Path(cfg.sft.run_dir)
        if (sft_run / "config.yaml").exists():
            results = train_sft(resume=Run.resume(sft_run, SFTConfig, config=cfg.sft), progress=progress)
        else:
            results = train_sft(cfg.sft, progress=progress)
        summary = {
            "env": cfg.collect.env.name,
            "instruction": data.episodes[0].instruction,
            "demos": len(data),
            "demo_success_rate": data.summary()["success_rate"],
            "sft_steps": results["steps"],
            "train_seconds": results["train_seconds"],
            "mean_success": results["mean_success"],
            "per_task": results["per_task"],
            "success_table": str(sft_run / "eval.md"),
            "training_plot": str(sft_run / "training.png"),
            "videos": [r["video"] for r in results["per_task"].values() if "video" in r],
            "collect": collected,
        }
        run.write_results(summary, "summary.json")
    return summary


def _hil_serl_demo(run: Run, cfg: DemoConfig, progress: bool) -> dict[str, Any]:
    with run:
        hil = cfg.hil_serl
        hil.run_dir = str(run.path / "hil-serl")
        sub = Path(hil.run_dir)
        already = False
        if (sub / "checkpoints").exists():
            resumed = Run.resume(sub, HILSERLConfig, config=hil)
            done = resumed.finished(hil.steps, marker="final_success")  # a rerun of a finished demo trains nothing
            already = done is not None
            results = done if done is not None else train_hil_serl(resume=resumed, progress=progress)
        else:
            results = train_hil_serl(hil, progress=progress)
        # "before" is the curve's first point, the policy evaluated as training starts (a
        # separate evaluation of the untrained policy would cost the demo two more minutes)
        first = results["evals"][0] if results["evals"] else None
        before = first if first is not None and first["step"] == 0 else None
        summary = {
            "already_trained": already,
            "recipe": "hil-serl", "env": hil.env.name, "obs_mode": hil.env.obs_mode, "demos": hil.demos,
            "env_steps": results["env_steps"], "updates": results["updates"],
            "wall_clock_min": results["wall_clock_min"], "actor_hz": results["actor_hz"],
            "success_before": before["success"] if before else None,
            "before_episodes": before["episodes"] if before else None, "mean_success": results["final_success"],
            "final_ci95": results["final_ci95"], "final_episodes": hil.final_eval_episodes,
            "intervention_rate": results["intervention_rate"],
            "evals": [{"step": e["step"], "success": e["success"]} for e in results["evals"]],
            "plot": results["plot"], "videos": [results["video"]] if results.get("video") else [],
        }
        run.write_results(summary, "summary.json")
    return summary


def _check_same_demo(sub: Path, hil: HILSERLConfig) -> None:
    """A run directory holding another demo (another env or observations: the 2-D reach demo of
    an earlier vlarl, say) is not continued with this one's settings, which would not fit it."""
    from vlarl.errors import VlarlError
    from vlarl.runtime import load_config

    if not (sub / "config.yaml").exists():
        return
    saved = load_config(HILSERLConfig, sub / "config.yaml").env
    if (saved.name, saved.obs_mode) != (hil.env.name, hil.env.obs_mode):
        raise VlarlError(f"{sub} holds a demo of {saved.name} from {saved.obs_mode}, not {hil.env.name} from "
                         f"{hil.env.obs_mode}; remove {sub.parent} or pass run_dir=<another directory>")


def format_summary(summary: dict[str, Any]) -> str:
    if summary.get("recipe") == "hil-serl":
        lo, hi = summary["final_ci95"]
        curve = ", ".join(f"{e['step']}: {e['success']:.2f}" for e in summary["evals"])
        before = (f"{summary['success_before']:.2f} ({summary['before_episodes']} episodes)"
                  if summary.get("success_before") is not None else "not measured")
        hz = f"actor {summary['actor_hz']:.0f} Hz" if summary["actor_hz"] is not None else "no actor rate"
        if summary.get("already_trained"):  # a rerun of a finished demo: its figures, nothing trained again
            hz += "; already trained"
        lines = [(f"vlarl demo: HIL-SERL on {summary['env']} from {summary['obs_mode']}, {summary['demos']} demos, "
                 f"simulated human, {summary['env_steps']} env steps / {summary['updates']} updates in "
                 f"{summary['wall_clock_min']:.1f} min ({hz})"), "",
                 (f"  policy alone: success {before} before training -> {summary['mean_success']:.2f} after "
                 f"({summary['final_episodes']} episodes, 95% CI {lo:.2f}-{hi:.2f})"),
                 f"  success by env step: {curve}",
                 f"  interventions: {summary['intervention_rate']:.2f} of all steps", "",
                 f"plot   {summary['plot']}"] + [f"video  {v}" for v in summary["videos"]]
        return "\n".join(lines) + "\n" + json.dumps({"mean_success": summary["mean_success"]})
    lines = [(f"vlarl demo: {summary['demos']} scripted demos of {summary['env']} ({summary['instruction']!r}) "
             f"-> SFT {summary['sft_steps']} steps ({summary['train_seconds']:.0f} s) -> evaluation"), ""]
    for env, r in summary["per_task"].items():
        lo, hi = r["ci95"]
        lines.append(f"  {env:32s} success {r['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}), "
                     f"mean episode length {r['mean_length']:.1f}, {r['episodes']} episodes")
    lines += ["", f"success table  {summary['success_table']}", f"training plot  {summary['training_plot']}"]
    lines += [f"video          {v}" for v in summary["videos"]]
    return "\n".join(lines) + "\n" + json.dumps({"mean_success": summary["mean_success"]})
