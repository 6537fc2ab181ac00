"""The main job on its embedded default: scripted pixel episodes of a Meta-World task.

Collects episodes into a dataset, reads them back, and writes a video, a plot and a
summary with the success rate and its 95% interval. Later steps turn this into the
flagship training run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlarl.data import EpisodeDataset
from vlarl.eval.plots import plot_episodes
from vlarl.eval.stats import wilson_interval
from vlarl.eval.video import write_video
from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
from vlarl.runtime import Run


@dataclass
class DemoConfig:
    collect: CollectConfig = field(
        default_factory=lambda: CollectConfig(
            env=EnvConfig(name="metaworld/drawer-open", obs_mode="pixels", image_size=112, cameras=["corner"],
                          episode_length=150),
            episodes=8,
            noise=0.2,
            workers=2,
        )
    )
    run_dir: str = "runs/demo"
    video_episodes: int = 3


def run_demo(cfg: DemoConfig | None = None, progress: bool = True, resume: Run | None = None) -> dict[str, Any]:
    """Run the demo; with ``resume`` (a reopened run) continue that run's collection."""
    if resume is None:
        assert cfg is not None
        root = Path(cfg.run_dir)
        cfg.collect.out = str(root / "dataset")
        run = Run.create(root.parent, root.name, cfg, exist_ok=True)
    else:
        run, cfg = resume, resume.config
        root = run.path
    with run:
        info = collect(cfg.collect, progress=progress)
        data = EpisodeDataset(cfg.collect.out)
        rewards, successes, frames = [], [], []
        for i, meta in enumerate(data.episodes):
            keys = ["reward"]
            cam = f"observation.images.{data.cameras[0]}" if data.cameras else None
            if cam and i < cfg.video_episodes:
                keys.append(cam)
            arrays = data.load(i, keys)
            rewards.append(arrays["reward"])
            successes.append(meta.success)
            run.log(i, episode_return=meta.episode_return, episode_length=meta.length, success=float(meta.success))
            if cam in arrays:
                frames.extend(arrays[cam])
        n, k = len(successes), int(sum(successes))
        lo, hi = wilson_interval(k, n)
        video = write_video(frames, root / "demo.mp4", fps=data.info["fps"] * 2) if frames else None
        plot = plot_episodes(rewards, successes, root / "episodes.png", title=f"{cfg.collect.env.name} (scripted)")
        summary = {
            "env": cfg.collect.env.name,
            "instruction": data.episodes[0].instruction if n else None,
            "episodes": n,
            "success_rate": k / n if n else None,
            "success_ci95": [lo, hi],
            "mean_episode_length": float(np.mean([e.length for e in data.episodes])) if n else None,
            "expert_noise": cfg.collect.noise,
            "dataset": str(data.root),
            "dataset_bytes": data.summary()["disk_bytes"],
            "video": str(video) if video else None,
            "plot": str(plot),
            "collect": info,
        }
        run.write_results(summary, "summary.json")
        (root / "summary.md").write_text(
            f"# vlarl demo: {summary['env']}\n\n"
            f"| episodes | success rate | 95% CI | mean length |\n|---|---|---|---|\n"
            f"| {n} | {summary['success_rate']:.2f} | {lo:.2f}-{hi:.2f} | {summary['mean_episode_length']:.1f} |\n\n"
            f"Video: `{summary['video']}`, plot: `{plot}`, dataset: `{data.root}`\n"
        )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lo, hi = summary["success_ci95"]
    return (
        f"{summary['env']} ({summary['instruction']!r}): success rate {summary['success_rate']:.2f} "
        f"(95% CI {lo:.2f}-{hi:.2f}) over {summary['episodes']} episodes, "
        f"mean length {summary['mean_episode_length']:.1f}\n"
        f"video {summary['video']}\nplot  {summary['plot']}\nsummary {Path(summary['plot']).parent / 'summary.json'}\n"
        + json.dumps({k: summary[k] for k in ('dataset', 'dataset_bytes')})
    )
