"""What every vlarl env has beyond gymnasium's API: a task, an instruction, an expert."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from vlarl.envs.spaces import action_space, check_obs_mode, observation_space
from vlarl.errors import VlarlError


class VlarlEnv(gym.Env):
    """Base of all vlarl envs.

    Observations are ``{"state": float32[d], "pixels": {camera: uint8[H, W, 3]}}`` (pixels only
    when ``obs_mode`` asks for them); actions are float32 in [-1, 1]^d. ``info["is_success"]``
    is reported on every step. Subclasses implement ``_reset_sim``, ``_step_sim``,
    ``_state``, ``_render_cameras``, ``expert_action`` and ``privileged_state``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}  # noqa: RUF012 (gymnasium's own attribute)
    render_mode = "rgb_array"
    gripper_action: int | None = None  # index of the gripper command in the action (None: no gripper)

    def __init__(
        self,
        *,
        task: str,
        instruction: str,
        state_dim: int,
        action_dim: int,
        obs_mode: str,
        cameras: tuple[str, ...],
        image_size: int,
        episode_length: int,
        terminate_on_success: bool,
    ) -> None:
        check_obs_mode(obs_mode, where=task)
        self.task = task
        self.instruction = instruction
        self.obs_mode = obs_mode
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.episode_length = int(episode_length)
        self.terminate_on_success = bool(terminate_on_success)
        self.observation_space = observation_space(state_dim, self.cameras, self.image_size, "pixels" in obs_mode)
        self.action_space = action_space(action_dim)
        self._t = 0

    # --- to implement -------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        """Advance one control step; return (reward, success, extra info).

        ``extra["failed"] = True`` ends the episode as a failure.
        """
        raise NotImplementedError

    def _state(self) -> np.ndarray:
        """The ``state`` vector for the current obs_mode."""
        raise NotImplementedError

    def _render_cameras(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def expert_action(self) -> np.ndarray:
        """The scripted expert's noise-free action in the current state."""
        raise NotImplementedError

    def privileged_state(self) -> np.ndarray:
        """Full low-dimensional simulator state (object and goal positions included)."""
        raise NotImplementedError

    def proprio(self) -> np.ndarray:
        """The robot's own state: what ``state`` holds in ``pixels`` mode, whatever the obs_mode."""
        raise NotImplementedError

    # --- gymnasium API ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._reset_sim(self.np_random)
        return self._obs(), {"is_success": False, "instruction": self.instruction}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise VlarlError(f"{self.task}: action shape {action.shape}, expected {self.action_space.shape}")
        action = np.clip(action, -1.0, 1.0)
        reward, success, extra = self._step_sim(action)
        self._t += 1
        # A sim may also end an episode in failure (e.g. the object left the workspace).
        failed = bool(extra.pop("failed", False))
        terminated = bool(success and self.terminate_on_success) or failed
        truncated = bool(self._t >= self.episode_length and not terminated)
        info = {"is_success": bool(success), **extra}
        return self._obs(), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The first camera's image (used for videos)."""
        return self._render_cameras()[self.cameras[0]]

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Every configured camera's image now, whatever the obs_mode (e.g. for a reward classifier)."""
        return self._render_cameras()

    def _obs(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"state": self._state().astype(np.float32, copy=False)}
        if "pixels" in self.obs_mode:
            obs["pixels"] = self._render_cameras()
        return obs

    # MuJoCo envs return their model and data so physics twins can perturb them.
    @property
    def mj_model(self):
        return None

    @property
    def mj_data(self):
        return None


def vlarl_env(env: gym.Env) -> VlarlEnv:
    """The vlarl env inside a wrapper stack (task, instruction, expert, cameras ...)."""
    base = env.unwrapped
    if not isinstance(base, VlarlEnv):
        raise VlarlError(f"{type(base).__name__} is not a vlarl env (a vlarl.envs.base.VlarlEnv); this needs one")
    return base
