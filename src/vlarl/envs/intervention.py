"""Human interventions: the wrapper that lets a device take over, and a simulated human.

A device is any callable ``device(obs, policy_action) -> action or None``: ``None`` lets the
policy act, an action takes over for this step. The wrapper executes the device's action
and reports ``info["intervened"]`` and ``info["intervention_action"]`` (what was actually
executed, in the wrapped env's action frame) so the actor stores the human's action, not
the policy's. Real devices (keyboard, gamepad) live in ``vlarl.runtime.intervention``.

The simulated human makes HIL runs reproducible: it watches the policy, and when the
policy heads the wrong way (its action's cosine with the scripted expert's below
``min_cosine``) for ``patience`` steps in a row it takes over with the expert for
``takeover_steps`` steps. Direction, not distance: a person corrects a robot going the
wrong way, not one whose exploration noise differs from what they would have done. Its per-episode budget shrinks linearly
with training progress, as a person intervenes less once the policy is good.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from vlarl.errors import VlarlError
from vlarl.ranges import check_ranges, ranged


class InterventionDevice(Protocol):
    def __call__(self, obs: dict[str, Any], policy_action: np.ndarray) -> np.ndarray | None: ...

    def reset(self) -> None: ...


@dataclass
class SimulatedHumanConfig:
    min_cosine: float = ranged(0.0, ge=-1, le=1)  # off track: cos(policy action, expert action) below this ...
    patience: int = ranged(3, ge=1)  # ... for this many steps in a row
    takeover_steps: int = ranged(8, ge=1)  # then the expert drives for this many steps
    budget: int = ranged(60, ge=0)  # intervened steps allowed per episode at the start of training
    min_budget: int = ranged(0, ge=0)  # ... falling linearly to this
    decay_steps: int = ranged(15_000, ge=1)  # ... over this many env steps of training
    noise: float = ranged(0.05, ge=0)  # std of the human's hand tremor added to the expert action


class SimulatedHuman:
    """The scripted expert as an intervening human (see the module docstring)."""

    def __init__(self, expert: Callable[[], np.ndarray], cfg: SimulatedHumanConfig | None = None,
                 seed: int = 0) -> None:
        self.expert, self.cfg = expert, check_ranges(cfg or SimulatedHumanConfig(), "sim_human")
        self.rng = np.random.default_rng(seed)
        self.progress = 0  # env steps of training so far (the learner sends it with weights)
        self.reset()

    def reset(self) -> None:
        self._off_track, self._driving, self._used = 0, 0, 0

    def set_progress(self, env_steps: int) -> None:
        self.progress = int(env_steps)

    @property
    def budget(self) -> int:
        c = self.cfg
        frac = min(1.0, self.progress / c.decay_steps)
        return round(c.budget + (c.min_budget - c.budget) * frac)

    def __call__(self, obs: dict[str, Any], policy_action: np.ndarray) -> np.ndarray | None:
        if self._used >= self.budget:
            return None
        expert = self.expert()
        if self._driving == 0:
            far = _cosine(np.asarray(policy_action, np.float64), expert) < self.cfg.min_cosine
            self._off_track = self._off_track + 1 if far else 0
            if self._off_track < self.cfg.patience:
                return None
            self._driving, self._off_track = self.cfg.takeover_steps, 0
        self._driving -= 1
        self._used += 1
        if self.cfg.noise > 0:
            expert = expert + self.rng.normal(0.0, self.cfg.noise, expert.shape)
        return np.clip(expert, -1.0, 1.0).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 1.0 if na < 1e-6 or nb < 1e-6 else float(a @ b / (na * nb))  # standing still is not "wrong way"


class ExpertDevice:
    """Always takes over with the expert: demos recorded through the same wrappers as training."""

    def __init__(self, expert: Callable[[], np.ndarray], noise: float = 0.0, seed: int = 0) -> None:
        self.expert, self.noise, self.rng = expert, noise, np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def __call__(self, obs: dict[str, Any], policy_action: np.ndarray) -> np.ndarray:
        a = self.expert()
        if self.noise > 0:
            a = a + self.rng.normal(0.0, self.noise, a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


class InterventionWrapper(gym.Wrapper):
    """Lets ``device`` override the policy's action; reports what was executed.

    The device acts in the frame of the env this wraps (world frame for vlarl envs); wrappers
    outside it that change the action frame map ``info["intervention_action"]`` back.
    """

    def __init__(self, env: gym.Env, device: InterventionDevice) -> None:
        super().__init__(env)
        self.device = device
        self._obs: dict[str, Any] | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.device.reset()
        self._obs = obs
        return obs, info

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        override = self.device(self._obs, action)
        executed = action if override is None else np.asarray(override, dtype=np.float32)
        obs, reward, terminated, truncated, info = self.env.step(executed)
        self._obs = obs
        info["intervened"] = override is not None
        info["intervention_action"] = executed
        return obs, reward, terminated, truncated, info


def expert_of(env: gym.Env) -> Callable[[], np.ndarray]:
    """The scripted expert of the innermost vlarl env."""
    base = env.unwrapped
    if not hasattr(base, "expert_action"):
        raise VlarlError(f"{type(base).__name__} has no scripted expert; the simulated human needs one")
    return base.expert_action
