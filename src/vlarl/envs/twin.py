"""Physics twins: a MuJoCo env with deterministically perturbed dynamics.

Later steps use a twin as the "real robot" (ASAP) and for robustness evaluation. The
perturbation is a plain dataclass so it can live in a config that policies never read.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from vlarl.errors import VlarlError
from vlarl.ranges import check_ranges, ranged


@dataclass(frozen=True)
class TwinConfig:
    """Multiplicative factors on the nominal model, plus action delay and noise.

    ``actuator_gain`` scales each actuator's gain; for position servos (non-zero bias) it
    scales the bias stiffness and damping too, so a servo stays a servo with a softer or
    stiffer gain. ``action_delay`` is in control steps; ``action_noise`` is the std of
    Gaussian noise added to the action (then clipped to [-1, 1]), drawn from ``seed``.
    """

    mass: float = ranged(1.0, gt=0)
    friction: float = ranged(1.0, ge=0)
    damping: float = ranged(1.0, ge=0)
    actuator_gain: float = ranged(1.0, gt=0)
    action_delay: int = ranged(0, ge=0)
    action_noise: float = ranged(0.0, ge=0)
    seed: int = ranged(0, ge=0)

    @classmethod
    def random(cls, seed: int, strength: float = 0.2, max_delay: int = 2, action_noise: float = 0.0) -> TwinConfig:
        """Factors drawn uniformly in [1 - strength, 1 + strength], reproducibly from ``seed``."""
        rng = np.random.default_rng(seed)
        f = lambda: float(rng.uniform(1 - strength, 1 + strength))
        return cls(f(), f(), f(), f(), int(rng.integers(0, max_delay + 1)), action_noise, seed)

    @classmethod
    def from_dict(cls, d: dict) -> TwinConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - valid)
        if bad:
            raise VlarlError(f"twin: unknown key(s) {bad}; valid: {sorted(valid)}")
        return check_ranges(cls(**d), "config", "twin.")


def perturb_model(model, twin: TwinConfig) -> None:
    """Scale masses/inertias, friction, joint damping and actuator gains in place."""
    model.body_mass[:] *= twin.mass
    model.body_inertia[:] *= twin.mass
    model.geom_friction[:] *= twin.friction
    model.dof_damping[:] *= twin.damping
    model.actuator_gainprm[:, 0] *= twin.actuator_gain
    servo = model.actuator_biasprm[:, 1] != 0
    model.actuator_biasprm[servo, 1:3] *= twin.actuator_gain


class PhysicsTwin(gym.Wrapper):
    """Applies a ``TwinConfig`` to any vlarl MuJoCo env (one with ``mj_model``)."""

    def __init__(self, env: gym.Env, twin: TwinConfig) -> None:
        super().__init__(env)
        model = getattr(env.unwrapped, "mj_model", None)
        if model is None:
            raise VlarlError(f"{type(env.unwrapped).__name__} has no MuJoCo model; physics twins need one")
        check_ranges(twin, "config", "twin.")
        perturb_model(model, twin)
        self.twin = twin
        self._noise_rng = np.random.default_rng(twin.seed)
        self._queue: collections.deque[np.ndarray] = collections.deque()

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if kwargs.get("seed") is not None:
            self._noise_rng = np.random.default_rng([self.twin.seed, kwargs["seed"]])
        # Before the first commands arrive, a delayed robot keeps executing "do nothing".
        zero = np.zeros(self.action_space.shape, np.float32)
        self._queue = collections.deque([zero] * self.twin.action_delay)
        return obs, info

    def step(self, action):
        action = np.asarray(action, np.float32)
        self._queue.append(action)
        executed = self._queue.popleft()
        if self.twin.action_noise > 0:
            noise = self._noise_rng.normal(0.0, self.twin.action_noise, executed.shape)
            executed = np.clip(executed + noise, -1.0, 1.0).astype(np.float32)
        return self.env.step(executed)
