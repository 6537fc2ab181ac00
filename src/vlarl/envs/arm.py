"""A planar 3-link arm tracking a reference joint motion: ASAP's motion tracking, small.

The arm moves in the vertical x-z plane (gravity matters, so mass and actuator gain do),
driven by torque motors under a PD law computed at the control rate, as a robot's joint
controller does: an action in [-1, 1]^3 is a joint target,
``target = DEFAULT_POSE + ACTION_SCALE * action`` radians (the default pose is the motion's
mean), and ``torque = KP (target - q) - KV qd`` from the state at the start of the step is
held for the step. A twin's actuator gain scales that torque.
The reference is one periodic motion per ``motion_seed`` (a sum of two harmonics per joint
over the episode), as ASAP tracks one motion per policy.

    state       q (3), qd (3), phase features (4): what the robot itself senses
    privileged  the reference q, qd at t and t+1, reference and actual end-effector xz
    reward      exp(-|q - q_ref|^2 / 0.05) + 0.5 exp(-|qd - qd_ref|^2 / 2)
                + exp(-|ee - ee_ref|^2 / 0.005) - 0.02 |a - a_prev|^2

An episode fails (ends early) when a joint is more than ``max_joint_error`` from its
reference. ``sim_state`` / ``set_sim_state`` read and restore the full physics state, so a
recorded trajectory can be replayed open loop from any of its steps.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from vlarl.envs.mujoco_base import MujocoEnv
from vlarl.errors import VlarlError

LINKS = (0.25, 0.22, 0.18)  # link lengths (m)
LINK_MASS = 0.5  # kg, on each link's centre
# PD gains per joint (N m / rad, N m s / rad): stiff enough to track, soft enough to stay
# stable with the torque held for a whole 20 ms control step, given the joints' rotor
# inertia (ARMATURE, kg m^2, as a geared motor adds).
KP = np.array([30.0, 20.0, 10.0])
KV = np.array([2.0, 1.2, 0.6])
ARMATURE = 0.05
ACTION_SCALE = 1.0  # radians of joint target per unit action, around the motion's mean pose
CONTROL_DT, FRAME_SKIP = 0.02, 4  # 50 Hz control, 200 Hz physics
STATE_DIM, PRIVILEGED_DIM = 10, 16
# The motion: offsets and harmonic amplitudes (rad) keep every joint well inside its range.
DEFAULT_POSE = np.array([-0.6, 0.6, 0.4])
_AMPLITUDE = np.array([0.5, 0.6, 0.6])


def arm_xml() -> str:
    """The arm's MJCF: three hinges about y, capsule links, one camera facing the plane."""
    bodies, close = "", ""
    for i, length in enumerate(LINKS):
        bodies += (f'<body name="link{i}" pos="{0 if i == 0 else LINKS[i - 1]} 0 0">'
                   f'<joint name="j{i}" type="hinge" axis="0 -1 0" damping="0.1" armature="{ARMATURE}"/>'
                   f'<geom type="capsule" fromto="0 0 0 {length} 0 0" size="0.02" mass="0" rgba="0.3 0.5 0.8 1"/>'
                   f'<inertial pos="{length / 2} 0 0" mass="{LINK_MASS}" diaginertia="1e-3 {LINK_MASS * length ** 2 / 12} '
                   f'{LINK_MASS * length ** 2 / 12}"/>')
        close += "</body>"
    bodies += f'<site name="ee" pos="{LINKS[-1]} 0 0" size="0.025" rgba="0.9 0.2 0.2 1"/>' + close
    actuators = "".join(f'<motor joint="j{i}" gear="1" ctrllimited="false"/>' for i in range(3))
    return f"""
<mujoco model="arm">
  <option timestep="{CONTROL_DT / FRAME_SKIP}" gravity="0 0 -9.81" integrator="implicitfast"/>
  <visual><global offwidth="256" offheight="256"/></visual>
  <worldbody>
    <light pos="0 -2 2" dir="0 1 -1"/>
    <geom type="plane" pos="0 0.3 0" size="1 1 0.1" zaxis="0 -1 0" rgba="0.9 0.9 0.9 1" contype="0" conaffinity="0"/>
    <camera name="side" pos="0.1 -1.6 0.1" xyaxes="1 0 0 0 0 1"/>
    <body name="base" pos="0 0 0.3">{bodies}</body>
  </worldbody>
  <actuator>{actuators}</actuator>
</mujoco>"""


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """End-effector (x, z) relative to the shoulder, for joint angles (..., 3)."""
    angles = np.cumsum(q, axis=-1)
    lengths = np.asarray(LINKS)
    return np.stack([(lengths * np.cos(angles)).sum(-1), (lengths * np.sin(angles)).sum(-1)], -1)


def pd_torque(q: np.ndarray, qd: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The joint controller: torque toward the commanded target, damped by the velocity."""
    return KP * (DEFAULT_POSE + ACTION_SCALE * action - q) - KV * qd


def _fk(q: np.ndarray) -> np.ndarray:
    """``forward_kinematics`` of one pose in scalar arithmetic (the control loop's hot path)."""
    a0 = float(q[0])
    a1 = a0 + float(q[1])
    a2 = a1 + float(q[2])
    l0, l1, l2 = LINKS
    return np.array([l0 * math.cos(a0) + l1 * math.cos(a1) + l2 * math.cos(a2),
                     l0 * math.sin(a0) + l1 * math.sin(a1) + l2 * math.sin(a2)])


class ReferenceMotion:
    """q_ref(t) = offset + sum_k a_k sin(2 pi k t / T + phi_k), k = 1, 2, per joint: smooth and
    periodic over the episode, drawn reproducibly from ``seed``."""

    def __init__(self, seed: int, period_steps: int) -> None:
        rng = np.random.default_rng(seed)
        weights = rng.uniform(0.4, 1.0, (2, 3)) * np.array([[1.0], [0.5]])
        self.amplitude = _AMPLITUDE * weights / weights.sum(0)
        self.phase = rng.uniform(0, 2 * np.pi, (2, 3))
        self.period = period_steps

    def __call__(self, t: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q_ref, qd_ref) at control step t (fractional allowed)."""
        t = np.asarray(t, float)[..., None, None]
        w = 2 * np.pi * np.array([[1.0], [2.0]]) / (self.period * CONTROL_DT)  # rad/s per harmonic
        arg = w * t * CONTROL_DT + self.phase
        q = DEFAULT_POSE + (self.amplitude * np.sin(arg)).sum(-2)
        qd = (self.amplitude * w * np.cos(arg)).sum(-2)
        return q, qd

    def acceleration(self, t: float | np.ndarray) -> np.ndarray:
        t = np.asarray(t, float)[..., None, None]
        w = 2 * np.pi * np.array([[1.0], [2.0]]) / (self.period * CONTROL_DT)
        return (-self.amplitude * w ** 2 * np.sin(w * t * CONTROL_DT + self.phase)).sum(-2)


class ArmTrackEnv(MujocoEnv):
    """Track one reference motion with a planar 3-link arm (see the module docstring)."""

    def __init__(
        self,
        obs_mode: str = "state",
        image_size: int = 96,
        cameras: tuple[str, ...] = ("side",),
        episode_length: int = 100,
        terminate_on_success: bool = False,
        motion_seed: int = 0,
        init_noise: float = 0.05,
        max_joint_error: float = 0.6,
        fast_render: bool = True,
    ) -> None:
        if tuple(cameras) != ("side",):
            raise VlarlError(f"arm/track has one camera 'side', got {cameras}")
        if episode_length < 2 or init_noise < 0 or max_joint_error <= 0:
            raise VlarlError(f"arm/track: need episode_length >= 2, init_noise >= 0, max_joint_error > 0; got "
                             f"{episode_length}, {init_noise}, {max_joint_error}")
        super().__init__(task="track", instruction="follow the reference motion", state_dim=STATE_DIM,
                         action_dim=3, obs_mode=obs_mode, cameras=("side",), image_size=image_size,
                         episode_length=episode_length, terminate_on_success=terminate_on_success)
        model = mujoco.MjModel.from_xml_string(arm_xml())
        self.motion = ReferenceMotion(motion_seed, episode_length)
        # The reference at every control step, looked up rather than recomputed in the loop.
        self._q_ref, self._qd_ref = self.motion(np.arange(episode_length + 2))
        self._ee_ref = forward_kinematics(self._q_ref)
        self.init_noise, self.max_joint_error = float(init_noise), float(max_joint_error)
        self.last_action = np.zeros(3, np.float32)  # what the previous step executed (for the smoothness penalty)
        # A learned residual on the next (qpos, qvel), called with (state, action) before the step.
        self.dynamics_residual: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
        self._init_mujoco(model, mujoco.MjData(model), {"side": "side"}, fast_render)

    # --- simulator ----------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        mujoco.mj_resetData(self._model, self._data)
        q0, qd0 = self.motion(0)
        self._data.qpos[:] = q0 + rng.normal(0, self.init_noise, 3)
        self._data.qvel[:] = qd0
        self.last_action = ((self._data.qpos - DEFAULT_POSE) / ACTION_SCALE).astype(np.float32)
        mujoco.mj_forward(self._model, self._data)

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        before = self._state() if self.dynamics_residual is not None else None
        self._data.ctrl[:] = pd_torque(self._data.qpos, self._data.qvel, action)
        mujoco.mj_step(self._model, self._data, nstep=FRAME_SKIP)
        if before is not None and self.dynamics_residual is not None:
            correction = self.dynamics_residual(before, self.last_action, action)
            self._data.qpos[:] += correction[:3]
            self._data.qvel[:] += correction[3:]
            mujoco.mj_forward(self._model, self._data)
        t = self._t + 1
        q, qd = self._data.qpos.copy(), self._data.qvel.copy()
        q_ref, qd_ref = self._q_ref[t], self._qd_ref[t]
        ee_err = np.sum((_fk(q) - self._ee_ref[t]) ** 2)
        reward = (np.exp(-np.sum((q - q_ref) ** 2) / 0.05) + 0.5 * np.exp(-np.sum((qd - qd_ref) ** 2) / 2.0)
                  + np.exp(-ee_err / 0.005) - 0.02 * np.sum((action - self.last_action) ** 2))
        self.last_action = action.astype(np.float32)
        failed = bool(np.abs(q - q_ref).max() > self.max_joint_error) or not np.all(np.isfinite(q))
        # "Success" per step: the end effector within 2 cm of the reference.
        return float(reward), bool(ee_err < 0.02 ** 2), {"failed": failed}

    def phase_features(self, t: int) -> np.ndarray:
        arg = 2 * math.pi * t / self.episode_length
        return np.array([math.sin(arg), math.cos(arg), math.sin(2 * arg), math.cos(2 * arg)], np.float32)

    def proprio(self) -> np.ndarray:
        return np.concatenate([self._data.qpos, self._data.qvel, self.phase_features(self._t)]).astype(np.float32)

    def _state(self) -> np.ndarray:
        return self.proprio()

    def privileged_state(self) -> np.ndarray:
        t = min(self._t, self.episode_length)
        return np.concatenate([self._q_ref[t], self._qd_ref[t], self._q_ref[t + 1], self._qd_ref[t + 1],
                               _fk(self._data.qpos), self._ee_ref[t]]).astype(np.float32)

    def expert_action(self) -> np.ndarray:
        """The next reference pose as the PD target (no gravity compensation)."""
        return np.clip((self.motion(self._t + 1)[0] - DEFAULT_POSE) / ACTION_SCALE, -1, 1).astype(np.float32)

    # --- state for open-loop replay -----------------------------------------------------
    def sim_state(self) -> dict[str, Any]:
        """Everything the next step depends on."""
        return {"qpos": self._data.qpos.copy(), "qvel": self._data.qvel.copy(), "ctrl": self._data.ctrl.copy(),
                "t": self._t, "last_action": self.last_action.copy()}

    def set_sim_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Restore a ``sim_state`` (e.g. a recorded one); returns the observation there."""
        self._data.qpos[:], self._data.qvel[:] = state["qpos"], state["qvel"]
        self._data.ctrl[:] = state["ctrl"]
        self._data.qacc_warmstart[:] = 0
        self._data.time = state["t"] * CONTROL_DT
        self._t = int(state["t"])
        self.last_action = np.asarray(state["last_action"], np.float32).copy()
        mujoco.mj_forward(self._model, self._data)
        return self._obs()

    @property
    def spec_name(self) -> str:
        return "arm/track"


def arm_env(env: gym.Env) -> ArmTrackEnv:
    """The ``arm/track`` env inside a wrapper stack (a twin, ASAP's delta action ...)."""
    base = env.unwrapped
    if not isinstance(base, ArmTrackEnv):
        raise VlarlError(f"{type(base).__name__} is not arm/track; this needs the arm env")
    return base
