"""``vlarl eval RUN_OR_CHECKPOINT``: evaluate a trained policy on its tasks (or given envs),
optionally on a physics twin; JSON, a Markdown table and videos."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlarl.errors import CheckpointError
from vlarl.fileio import atomic_write_text
from vlarl.runtime import latest_checkpoint, load_checkpoint
from vlarl.runtime.config import check_ranges, ranged


@dataclass
class EvalConfig:
    episodes: int = ranged(20, ge=1)
    envs: int = ranged(2, ge=1)
    env_names: list[str] = field(default_factory=list)  # default: the tasks the policy was trained on
    episode_length: int | None = ranged(None, ge=1)
    videos: int = ranged(2, ge=0)
    twin_seed: int | None = ranged(None, ge=0)  # evaluate on TwinConfig.random(twin_seed, twin_strength)
    twin_strength: float = ranged(0.2, ge=0, lt=1)  # factors in [1 - strength, 1 + strength]
    seed: int = ranged(0, ge=0)
    out: str | None = None


def resolve(path: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint directory) for a run or a checkpoint path."""
    path = Path(path)
    if (path / "meta.json").exists() and path.parent.name == "checkpoints":
        run, ckpt = path.parent.parent, path
    else:
        run, found = path, latest_checkpoint(path / "checkpoints")
        if found is None:
            raise CheckpointError(f"{path}: no complete checkpoint under {path / 'checkpoints'}")
        ckpt = found
    if not (run / "policy.json").exists():
        raise CheckpointError(f"{run}: no policy.json; is this a vlarl training run?")
    return run, ckpt


def evaluate_run(path: str | Path, cfg: EvalConfig) -> dict[str, Any]:
    from vlarl.envs import TwinConfig
    from vlarl.eval.evaluate import results_table
    from vlarl.models.language import InstructionEncoder
    from vlarl.recipes.sft import SFTConfig, build_policy, evaluate_policy

    check_ranges(cfg, "eval")
    run, ckpt = resolve(path)
    spec = json.loads((run / "policy.json").read_text())
    policy = build_policy(spec)
    load_checkpoint(ckpt, {"policy": policy}, restore_rng=False)
    tasks = spec["tasks"]
    if cfg.env_names:
        from vlarl.envs import make
        from vlarl.envs.base import vlarl_env

        tasks = {}
        for name in cfg.env_names:
            env = make(name)  # an unknown name stops here, listing the valid ones
            tasks[vlarl_env(env).instruction] = {"env": name, "options": next(iter(spec["tasks"].values()))["options"]}
            env.close()
    twin = TwinConfig.random(cfg.twin_seed, cfg.twin_strength) if cfg.twin_seed is not None else None
    out = Path(cfg.out) if cfg.out else run / ("eval_twin" if twin else "eval_final")
    out.mkdir(parents=True, exist_ok=True)
    sft_like = SFTConfig(eval_episodes=cfg.episodes, eval_envs=cfg.envs, eval_episode_length=cfg.episode_length,
                         seed=cfg.seed)
    results = evaluate_policy(policy, InstructionEncoder(), tasks, sft_like, out, videos=cfg.videos, twin=twin)
    summary = {"run": str(run), "checkpoint": str(ckpt), "twin": twin.__dict__ if twin else None,
               "mean_success": sum(r["success_rate"] for r in results.values()) / max(len(results), 1),
               "per_task": results}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    title = f"Evaluation of {ckpt}" + (f" on twin {twin}" if twin else "")
    atomic_write_text(out / "results.md", results_table(results, title))
    summary["out"] = str(out)
    return summary
