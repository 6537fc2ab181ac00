"""Scripted experts with a noise knob, for demos and for the simulated human."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from vlarl.envs.base import vlarl_env
from vlarl.errors import VlarlError


class ScriptedExpert:
    """Calls the env's scripted expert and adds Gaussian noise of std ``noise``.

    The expert reads simulator state (as every scripted expert does), so it is bound to one
    env. ``noise=0`` gives the expert itself; 0.1–0.3 gives imperfect demos.
    """

    def __init__(self, env: gym.Env, noise: float = 0.0, seed: int | None = None) -> None:
        if noise < 0:
            raise VlarlError(f"expert noise must be >= 0, got {noise}")
        self.env = vlarl_env(env)
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs=None) -> np.ndarray:
        action = self.env.expert_action()
        if self.noise > 0:
            action = np.clip(action + self.rng.normal(0.0, self.noise, action.shape), -1.0, 1.0)
        return action.astype(np.float32)
