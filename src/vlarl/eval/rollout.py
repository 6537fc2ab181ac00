"""Run one episode of a policy in an env."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from vlarl.data.episodes import EpisodeRecorder


@dataclass
class EpisodeResult:
    success: bool
    length: int
    episode_return: float
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def run_episode(
    env: gym.Env,
    policy: Callable[[dict[str, Any]], np.ndarray],
    seed: int | None = None,
    keep_arrays: bool = True,
) -> EpisodeResult:
    """Reset with ``seed`` and act until the episode ends.

    With ``keep_arrays`` the result holds the episode in the dataset layout
    (``EpisodeWriter.write_episode`` takes it as it is).
    """
    obs, _ = env.reset(seed=seed)
    recorder = EpisodeRecorder(obs) if keep_arrays else None
    success, length, total = False, 0, 0.0
    done = False
    while not done:
        action = np.asarray(policy(obs), np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        step_success = bool(info.get("is_success", False))
        if recorder is not None:
            recorder.add(action, float(reward), obs, terminated, truncated, step_success)
        success |= step_success
        length += 1
        total += float(reward)
        done = terminated or truncated
    return EpisodeResult(success, length, total, recorder.arrays() if recorder is not None else {})
