"""The main job on its embedded default: collect -> SFT -> eval on a Meta-World task.

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
from vlarl.recipes.sft import SFTConfig, train_sft
from vlarl.runtime import Run


def _default_collect() -> CollectConfig:
    env = EnvConfig(name="metaworld/drawer-open", obs_mode="pixels", image_size=84, cameras=["corner"],
                    episode_length=150)
    return CollectConfig(env=env, episodes=20, noise=0.1, workers=2)


def _default_sft() -> SFTConfig:
    return SFTConfig(steps=1500, batch_size=64, eval_episodes=10, eval_envs=2, save_every=500, log_every=50,
                     video_episodes=2)


@dataclass
class DemoConfig:
    collect: CollectConfig = field(default_factory=_default_collect)
    sft: SFTConfig = field(default_factory=_default_sft)
    run_dir: str = "runs/demo"


def run_demo(cfg: DemoConfig | None = None, progress: bool = True, resume: Run | None = None) -> dict[str, Any]:
    """Run the demo; with ``resume`` (a reopened demo run) continue where it stopped."""
    run, cfg = Run.start(cfg, resume, exist_ok=True)
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


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"vlarl demo: {summary['demos']} scripted demos of {summary['env']} ({summary['instruction']!r}) "
             f"-> SFT {summary['sft_steps']} steps ({summary['train_seconds']:.0f} s) -> evaluation", ""]
    for env, r in summary["per_task"].items():
        lo, hi = r["ci95"]
        lines.append(f"  {env:32s} success {r['success_rate']:.2f} (95% CI {lo:.2f}-{hi:.2f}), "
                     f"mean episode length {r['mean_length']:.1f}, {r['episodes']} episodes")
    lines += ["", f"success table  {summary['success_table']}", f"training plot  {summary['training_plot']}"]
    lines += [f"video          {v}" for v in summary["videos"]]
    return "\n".join(lines) + "\n" + json.dumps({"mean_success": summary["mean_success"]})
