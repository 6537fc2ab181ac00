"""A tiny dependency-free 2-D reach task with pixels: learning tests run on it in seconds.

The agent (red dot) moves in the square [-1, 1]^2 and must reach a randomly placed green
target. Images are drawn with numpy, upright: image row 0 is y = +1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlarl.envs.base import VlarlEnv
from vlarl.errors import VlarlError

AGENT_RGB = np.array([230, 40, 40], np.uint8)
GOAL_RGB = np.array([40, 200, 60], np.uint8)
BACKGROUND = 30
STEP = 0.1  # distance moved per unit action
SUCCESS_RADIUS = 0.1


class ToyReachEnv(VlarlEnv):
    """2-D point reach; state = (agent x, y, goal x, y) or, in pixel mode, (agent x, y)."""

    def __init__(
        self,
        obs_mode: str = "state",
        image_size: int = 32,
        cameras: tuple[str, ...] = ("top",),
        episode_length: int = 30,
        reward: str = "dense",
        terminate_on_success: bool = True,
    ) -> None:
        if tuple(cameras) != ("top",):
            raise VlarlError(f"toy/reach has one camera 'top', got {cameras}")
        if reward not in ("dense", "sparse"):
            raise VlarlError(f"toy/reach: reward must be 'dense' or 'sparse', got {reward!r}")
        super().__init__(
            task="reach",
            instruction="move the red dot to the green target",
            state_dim=2 if obs_mode == "pixels" else 4,
            action_dim=2,
            obs_mode=obs_mode,
            cameras=("top",),
            image_size=image_size,
            episode_length=episode_length,
            terminate_on_success=terminate_on_success,
        )
        self.reward_type = reward
        self.agent = np.zeros(2)
        self.goal = np.zeros(2)
        grid = (np.arange(image_size) + 0.5) / image_size * 2 - 1
        self._x = grid[None, :]
        self._y = -grid[:, None]  # row 0 is the top of the square (y = +1)

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self.agent = rng.uniform(-0.8, 0.8, 2)
        self.goal = rng.uniform(-0.8, 0.8, 2)
        while np.linalg.norm(self.goal - self.agent) < 0.4:
            self.goal = rng.uniform(-0.8, 0.8, 2)

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        self.agent = np.clip(self.agent + STEP * action, -1.0, 1.0)
        dist = float(np.linalg.norm(self.goal - self.agent))
        success = dist < SUCCESS_RADIUS
        reward = float(success) if self.reward_type == "sparse" else -dist
        return reward, success, {"distance": dist}

    def _state(self) -> np.ndarray:
        if self.obs_mode == "pixels":
            return self.proprio()
        return np.concatenate([self.agent, self.goal])

    def proprio(self) -> np.ndarray:
        return self.agent.astype(np.float32)

    def _render_cameras(self) -> dict[str, np.ndarray]:
        img = np.full((self.image_size, self.image_size, 3), BACKGROUND, np.uint8)
        radius2 = max(SUCCESS_RADIUS, 2.0 / self.image_size) ** 2
        for pos, rgb in ((self.goal, GOAL_RGB), (self.agent, AGENT_RGB)):
            mask = (self._x - pos[0]) ** 2 + (self._y - pos[1]) ** 2 <= radius2
            img[mask] = rgb
        return {"top": img}

    def expert_action(self) -> np.ndarray:
        return np.clip((self.goal - self.agent) / STEP, -1.0, 1.0).astype(np.float32)

    def privileged_state(self) -> np.ndarray:
        return np.concatenate([self.agent, self.goal]).astype(np.float32)
