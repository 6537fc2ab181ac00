"""Env wrappers: HIL-SERL's end-effector frame and learned success signal, reward shaping,
privileged info, a pixel recorder, ASAP's last-action observation and delta actions, and a
frozen encoder's tokens of each frame."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from vlarl.envs.base import vlarl_env
from vlarl.envs.spaces import env_dims
from vlarl.errors import VlarlError
from vlarl.ranges import ranged


class EncodeFrames(gym.Wrapper):
    """Adds ``obs["features"]``: a frozen encoder's tokens of each camera frame, computed once
    as the frame arrives (``frame_encoder``: a ``vlarl.models.encoders.FrameEncoder``), so that
    what the policy acts on, what an episode records and what a replay stores are the same
    tokens. ``keep_frames=False`` drops the images from the observation (wrappers inside, a
    reward classifier for one, still see them; ``render`` is untouched)."""

    def __init__(self, env: gym.Env, frame_encoder: Any, keep_frames: bool = True) -> None:
        super().__init__(env)
        self.frame_encoder, self.keep_frames = frame_encoder, keep_frames
        spaces_ = dict(env.observation_space.spaces)  # type: ignore[attr-defined]
        if "pixels" not in spaces_:
            raise VlarlError(f"EncodeFrames: {type(env.unwrapped).__name__} has no camera images to encode")
        if not keep_frames:
            del spaces_["pixels"]
        spaces_["features"] = gym.spaces.Dict({c: gym.spaces.Box(-np.inf, np.inf, shape, np.float16)
                                               for c, shape in frame_encoder.shapes.items()})
        self.observation_space = gym.spaces.Dict(spaces_)

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        out = {**obs, "features": self.frame_encoder.encode(obs["pixels"])}
        if not self.keep_frames:
            del out["pixels"]
        return out

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self.observation(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(obs), reward, terminated, truncated, info


class RelativeFrame(gym.Wrapper):
    """Actions and positions in the end-effector frame at the start of the episode.

    With (p0, R0) the end-effector pose at reset, every world position x in ``state`` becomes
    R0^T (x - p0) and an action's translation a[:3] is executed as R0 a[:3]. The policy then
    sees the same numbers wherever the episode starts (HIL-SERL's trick for invariance). The
    env must provide ``ee_pose()`` and ``position_slices``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not (hasattr(base, "ee_pose") and hasattr(base, "position_slices")):
            raise VlarlError(f"relative_frame: {type(base).__name__} does not expose ee_pose() and position_slices")
        self._base: Any = base  # a sim env or a RobotEnv: anything with ee_pose() and position_slices
        self._p0, self._r0 = np.zeros(3), np.eye(3)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._p0, self._r0 = self._base.ee_pose()
        return self.observation(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self.to_world(action))
        if "intervention_action" in info:  # what a human executed, in the policy's frame
            info["intervention_action"] = self.from_world(info["intervention_action"])
        return self.observation(obs), reward, terminated, truncated, info

    def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        state = obs["state"].copy()
        for s in self._base.position_slices:
            state[s] = self._r0.T @ (state[s] - self._p0)
        return {**obs, "state": state}

    def to_world(self, action: np.ndarray) -> np.ndarray:
        a = np.array(action, dtype=np.float32)
        a[:3] = self._r0 @ a[:3]
        return a

    def from_world(self, action: np.ndarray) -> np.ndarray:
        a = np.array(action, dtype=np.float32)
        a[:3] = self._r0.T @ a[:3]
        return a


class ClassifierReward(gym.Wrapper):
    """Replaces the env's success signal with a learned image classifier's.

    ``success_prob(images)`` maps {camera: uint8 HWC} to a probability. A success is
    ``confirm_steps`` frames in a row at or above ``threshold``: the episode ends at the first
    one, so a single false-positive frame would end it early (measured on scripted pick-cube
    episodes: 3 of 16 ended before the true success with one frame, none with two). Reward is
    1 on a success and 0 otherwise, and the episode ends there (``terminate``). The env's
    own signal is kept as ``info["true_success"]`` for evaluation only; build the env with
    ``terminate_on_success=False`` so it cannot leak through termination either.
    """

    def __init__(self, env: gym.Env, success_prob: Callable[[dict[str, np.ndarray]], float],
                 threshold: float = 0.5, terminate: bool = True, confirm_steps: int = 1) -> None:
        super().__init__(env)
        if confirm_steps < 1:
            raise VlarlError(f"classifier confirm_steps must be >= 1, got {confirm_steps}")
        self.success_prob, self.threshold, self.terminate = success_prob, float(threshold), terminate
        self.confirm_steps, self._streak = confirm_steps, 0

    def reset(self, **kwargs):
        self._streak = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        images = obs["pixels"] if "pixels" in obs else self.env.unwrapped.render_cameras()
        prob = float(self.success_prob(images))
        self._streak = self._streak + 1 if prob >= self.threshold else 0
        success = self._streak >= self.confirm_steps
        info["true_success"], info["is_success"], info["classifier_prob"] = info["is_success"], success, prob
        terminated = bool(terminated or (success and self.terminate))
        truncated = bool(truncated and not terminated)
        return obs, float(success), terminated, truncated, info


@dataclass
class RewardShapingConfig:
    """ConRFT's shaped reward (see ``ShapedReward``)."""

    success: float = ranged(10.0)  # rewards: any number (a penalty is negative)
    step: float = ranged(-0.05)
    gripper_toggle: float = ranged(-0.2)


class ShapedReward(gym.Wrapper):
    """ConRFT's reward: ``success`` on a success step, ``step`` on every step, ``gripper_toggle``
    each time the gripper command switches between open and closed.

    The gripper's state is the sign of the last command outside the dead band (|g| > 0.5; a
    command inside it keeps the state), so a policy dithering around zero is not charged but
    one that opens and closes again is. Success comes from ``info["is_success"]`` (the env's,
    or a reward classifier's when one wraps the env inside this wrapper).
    """

    def __init__(self, env: gym.Env, success: float = 10.0, step: float = -0.05, gripper_toggle: float = -0.2) -> None:
        super().__init__(env)
        self.success, self.step_reward, self.toggle = float(success), float(step), float(gripper_toggle)
        self.gripper_index = getattr(env.unwrapped, "gripper_action", None)  # None: no gripper, no toggles
        self._gripper = 0

    def reset(self, **kwargs):
        self._gripper = 0  # unknown: the first command sets it without a penalty
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        toggled = False
        if self.gripper_index is not None:
            executed = info.get("intervention_action", action)  # what moved the robot, human or policy
            g = float(np.asarray(executed)[self.gripper_index])
            state = 1 if g > 0.5 else -1 if g < -0.5 else self._gripper
            toggled = self._gripper != 0 and state != self._gripper
            self._gripper = state
        reward = self.step_reward + self.success * float(bool(info["is_success"])) + self.toggle * float(toggled)
        info["gripper_toggled"] = toggled
        return obs, reward, terminated, truncated, info


class PrivilegedInfo(gym.Wrapper):
    """Puts ``env.privileged_state()`` into ``info["privileged_state"]`` after every reset and
    step, so code driving the env through a vector env can score simulator state (GRAPE's
    stage costs)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info["privileged_state"] = self.env.unwrapped.privileged_state()
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["privileged_state"] = self.env.unwrapped.privileged_state()
        return obs, reward, terminated, truncated, info


class PixelsRecorder(gym.Wrapper):
    """Records each episode as a ``pixels``-mode env would show it (proprio ``state`` and every
    camera's image), whatever the wrapped env's obs_mode, with the actions the env executed.

    Put it innermost: a policy acting from state (an RL specialist, a scripted expert) then
    leaves a dataset a pixel policy can learn from. ``episode()`` returns the arrays of the
    episode so far, in the dataset layout.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._recorder: Any = None

    def _view(self) -> dict[str, Any]:
        base = vlarl_env(self.env)
        return {"state": base.proprio(), "pixels": base.render_cameras()}

    def reset(self, **kwargs):
        from vlarl.data.episodes import EpisodeRecorder

        obs, info = self.env.reset(**kwargs)
        self._recorder = EpisodeRecorder(self._view())
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        executed = np.clip(np.asarray(action, np.float32), -1.0, 1.0)  # what the base env ran
        self._recorder.add(executed, reward, self._view(), terminated, truncated, bool(info.get("is_success", False)))
        return obs, reward, terminated, truncated, info

    def episode(self) -> dict[str, np.ndarray]:
        if self._recorder is None:
            raise VlarlError("PixelsRecorder: no episode yet (call reset first)")
        return self._recorder.arrays()


class LastActionObs(gym.Wrapper):
    """Appends the previous *commanded* action to ``state`` (zeros after a reset).

    Outermost, so it reports what the policy sent, not what a delayed robot or a delta
    action model below it executed: the robot's own computer knows only its commands.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        _, n, _ = env_dims(env)
        assert isinstance(space, gym.spaces.Dict) and isinstance(space["state"], gym.spaces.Box)
        low, high = space["state"].low, space["state"].high
        spaces = dict(space.spaces)
        spaces["state"] = gym.spaces.Box(np.concatenate([low, -np.ones(n)]).astype(np.float32),
                                         np.concatenate([high, np.ones(n)]).astype(np.float32))
        self.observation_space = gym.spaces.Dict(spaces)
        self._last = np.zeros(n, np.float32)

    def _with_last(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {**obs, "state": np.concatenate([obs["state"], self._last]).astype(np.float32)}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._last = np.zeros_like(self._last)
        return self._with_last(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._last = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        return self._with_last(obs), reward, terminated, truncated, info


class DeltaAction(gym.Wrapper):
    """ASAP's aligned simulator: executes ``clip(a + delta(state, a_prev, a))``, where ``delta``
    maps the env's state, the previous commanded action and the action to a correction."""

    def __init__(self, env: gym.Env, delta: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> None:
        super().__init__(env)
        self.delta = delta
        self._state: np.ndarray | None = None
        self._prev = np.zeros(env_dims(env)[1], np.float32)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._state, self._prev = obs["state"], np.zeros_like(self._prev)
        return obs, info

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        executed = np.clip(action + self.delta(self._state, self._prev, action), -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, truncated, info = self.env.step(executed)
        self._state, self._prev = obs["state"], action
        info["delta_action"] = executed - action
        return obs, reward, terminated, truncated, info


def insert_innermost(env: Any, wrap: Callable[[Any], Any]) -> Any:
    """``env`` with ``wrap`` applied to its base env, inside every wrapper it already has."""
    if not isinstance(env, gym.Wrapper):
        return wrap(env)
    outer = env
    while isinstance(outer.env, gym.Wrapper):
        outer = outer.env
    outer.env = wrap(outer.env)
    return env
