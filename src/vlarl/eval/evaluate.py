"""Evaluate a policy: N episodes of one env over parallel worker processes.

Each worker runs a fixed share of the episodes (worker i: episodes i, i + n, ...), so fast
episodes are not over-counted, and the result for a seed does not depend on timing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlarl.eval.stats import wilson_interval
from vlarl.eval.video import write_video


def evaluate(
    act: Callable[[dict[str, Any], list[str]], np.ndarray],
    env_name: str,
    episodes: int,
    num_envs: int = 2,
    seed: int = 10_000,
    env_options: dict[str, Any] | None = None,
    video_path: str | Path | None = None,
    video_episodes: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """``act(obs_batch, instructions) -> actions (n, A)``; returns success rate with its 95%
    Wilson interval, mean length and return, and per-episode records."""
    from vlarl.envs import make_vec

    num_envs = max(1, min(num_envs, episodes))
    quota = [episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)]
    vec = make_vec(env_name, num_envs, asynchronous=num_envs > 1, **(env_options or {}))
    records: list[dict[str, Any]] = []
    frames: list[np.ndarray] = []
    from tqdm import tqdm

    bar = tqdm(total=episodes, desc=f"eval {env_name}", unit="ep", disable=not progress, leave=False)
    try:
        instructions = list(vec.get_attr("instruction"))
        first_camera = None
        obs, _ = vec.reset(seed=seed)
        if "pixels" in obs:
            first_camera = next(iter(obs["pixels"]))
        done_count = [0] * num_envs
        ep_return = np.zeros(num_envs)
        ep_len = np.zeros(num_envs, int)
        ep_success = np.zeros(num_envs, bool)
        while any(d < q for d, q in zip(done_count, quota)):
            if video_path is not None and first_camera and done_count[0] < video_episodes:
                frames.append(obs["pixels"][first_camera][0].copy())
            actions = act(obs, instructions)
            obs, reward, terminated, truncated, info = vec.step(actions)
            ep_return += reward
            ep_len += 1
            done = terminated | truncated
            # An env that just finished has already reset (SAME_STEP autoreset): its last
            # step's info is under "final_info", the new episode's under the usual keys.
            step_success = np.asarray(info["is_success"], bool).copy()
            if done.any():
                step_success[done] = np.asarray(info["final_info"]["is_success"], bool)[done]
            ep_success |= step_success
            for i in np.flatnonzero(done):
                if done_count[i] < quota[i]:
                    records.append({"env_index": int(i), "success": bool(ep_success[i]), "length": int(ep_len[i]),
                                    "return": float(ep_return[i])})
                    done_count[i] += 1
                    bar.update(1)
                    bar.set_postfix(success=f"{np.mean([r['success'] for r in records]):.2f}")
                ep_return[i], ep_len[i], ep_success[i] = 0.0, 0, False
    finally:
        bar.close()
        vec.close()
    k = sum(r["success"] for r in records)
    lo, hi = wilson_interval(k, len(records))
    result = {
        "env": env_name,
        "episodes": len(records),
        "success_rate": k / len(records),
        "ci95": [lo, hi],
        "mean_length": float(np.mean([r["length"] for r in records])),
        "mean_return": float(np.mean([r["return"] for r in records])),
        "records": records,
    }
    if video_path is not None and frames:
        result["video"] = str(write_video(frames, video_path, fps=20))
    return result


def results_table(results: dict[str, dict[str, Any]], title: str) -> str:
    """Markdown table of per-env results (``{env: evaluate(...)}``)."""
    lines = [f"# {title}", "", "| env | success | 95% CI | mean length | episodes |", "|---|---|---|---|---|"]
    for env, r in results.items():
        lines.append(f"| {env} | {r['success_rate']:.2f} | {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} | "
                     f"{r['mean_length']:.1f} | {r['episodes']} |")
    rates = [r["success_rate"] for r in results.values()]
    lines += ["", f"Mean success: {np.mean(rates):.3f}"]
    return "\n".join(lines) + "\n"
