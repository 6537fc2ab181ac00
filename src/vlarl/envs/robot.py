"""What a real robot must provide to run vlarl's recipes, and the safety box around it.

``RobotEnv`` is the protocol: vlarl's sim envs satisfy it, and a driver for a real arm
implements it (then serves it over the network with ``vlarl.runtime.bridge``)::

    observation   {"state": float32[d] (proprio in pixels mode), "pixels": {camera: uint8[H, W, 3]}}
    action        float32 in [-1, 1]: end-effector delta (dx, dy, dz) in units of ``ee_step``
                  metres, then the gripper (+1 closes) when the arm has one
    reset(seed) -> (obs, info);  step(action) -> (obs, reward, terminated, truncated, info)
    proprio()   -> the robot's own state;  ee_pose() -> (xyz (3,), rotation (3, 3)), world frame
    cameras, ee_step, control_dt, close()

``SafetyBox`` clips every commanded end-effector delta so the target stays inside the
workspace box and the speed stays under ``max_speed``: a learning policy never asks the arm
for more, whatever it outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from vlarl.errors import VlarlError
from vlarl.ranges import check_ranges, ranged


@runtime_checkable
class RobotEnv(Protocol):
    """The calls vlarl makes on a robot (see the module docstring for the contract)."""

    observation_space: gym.Space
    action_space: gym.Space
    cameras: tuple[str, ...]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]: ...

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]: ...

    def proprio(self) -> np.ndarray: ...

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass
class SafetyConfig:
    low: list[float] = field(default_factory=lambda: [0.2, -0.3, 0.0])  # workspace box, metres (world frame)
    high: list[float] = field(default_factory=lambda: [0.7, 0.3, 0.5])
    max_speed: float = ranged(0.5, gt=0)  # m/s of the end effector
    ee_step: float = ranged(0.025, gt=0)  # metres per unit of the (dx, dy, dz) action
    control_dt: float = ranged(0.1, gt=0)  # seconds per step


class SafetyBox(gym.Wrapper):
    """Clips end-effector delta actions to the workspace box and the speed limit; reports
    ``info["safety_clipped"]`` (and counts the steps it clipped)."""

    def __init__(self, env: gym.Env, cfg: SafetyConfig | None = None) -> None:
        super().__init__(env)
        self.cfg = cfg = cfg or SafetyConfig()
        self.low, self.high = np.asarray(cfg.low, float), np.asarray(cfg.high, float)
        if self.low.shape != (3,) or self.high.shape != (3,) or np.any(self.low >= self.high):
            raise VlarlError(f"safety: low {cfg.low} and high {cfg.high} must be xyz with low < high")
        check_ranges(cfg, "safety")
        if not hasattr(env.unwrapped, "ee_pose"):
            raise VlarlError(f"{type(env.unwrapped).__name__} has no ee_pose(); a safety box needs the end effector")
        self._robot: Any = env.unwrapped  # a sim env or a RobotEnv: anything with ee_pose()
        self.clipped_steps = 0

    def safe_action(self, action: np.ndarray) -> tuple[np.ndarray, bool]:
        """The action with its xyz delta limited; whether it changed."""
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        pos = self._robot.ee_pose()[0]
        delta = action[:3] * self.cfg.ee_step
        max_step = self.cfg.max_speed * self.cfg.control_dt
        norm = float(np.linalg.norm(delta))
        if norm > max_step:
            delta = delta * (max_step / norm)
        delta = np.clip(pos + delta, self.low, self.high) - pos
        safe = action.copy()
        safe[:3] = np.clip(delta / self.cfg.ee_step, -1.0, 1.0)
        return safe, bool(np.any(np.abs(safe - action) > 1e-6))

    def step(self, action):
        safe, clipped = self.safe_action(action)
        self.clipped_steps += clipped
        obs, reward, terminated, truncated, info = self.env.step(safe)
        info["safety_clipped"] = clipped
        return obs, reward, terminated, truncated, info
