"""ASAP's alignment rules and its baselines, on recorded "real" trajectories.

Recordings (``Recordings``) hold what the real robot measured and what its policy commanded:
``qpos``/``qvel`` (E, T+1, 3) and ``actions`` (E, T, 3). Everything below replays them in
simulation from a recorded state, open loop:

    delta action (ASAP)  pi_delta(s, a_prev, a) -> delta, trained by PPO in ``OpenLoopReplay``:
                         s' = f_sim(s, a + delta), reward = exp(-|q' - q'_real|^2 / sigma_q)
                         + 0.5 exp(-|qd' - qd'_real|^2 / sigma_qd) - w |delta|   (w = 0.1)
    SysID                the twin's physical factors (mass, friction, damping, actuator gain;
                         optionally the action delay) fitted by the cross-entropy method to
                         minimise the open-loop replay error
    DeltaDynamics        a residual g(s, a_prev, a) on the next (qpos, qvel), regressed on
                         real_{t+1} - f_sim(real_t, a_t)

The delta model's observation is (joint state, previous commanded action, action): with the
previous command it can undo an action delay, which no physical factor expresses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from vlarl.algos.asymmetric_ppo import RunningNorm
from vlarl.envs.arm import ACTION_SCALE, KP, _fk, arm_env, pd_torque
from vlarl.envs.twin import PhysicsTwin, TwinConfig
from vlarl.errors import VlarlError

DELTA_OBS_DIM = 12  # joint positions and velocities (6), previous command (3), action (3)
DELTA_PRIVILEGED_DIM = 12  # the critic's view: the recorded real joint state now and next
SYSID_PARAMS = ("mass", "friction", "damping", "actuator_gain", "action_delay")


@dataclass
class Recordings:
    """Real trajectories: measured joint states and commanded actions, all of length T."""

    qpos: np.ndarray  # (E, T+1, 3)
    qvel: np.ndarray  # (E, T+1, 3)
    actions: np.ndarray  # (E, T, 3), as commanded (the robot may execute them late)

    def __post_init__(self) -> None:
        E, T1 = self.qpos.shape[:2]
        if self.qvel.shape[:2] != (E, T1) or self.actions.shape[:2] != (E, T1 - 1):
            raise VlarlError(f"recordings: shapes qpos {self.qpos.shape}, qvel {self.qvel.shape}, actions "
                             f"{self.actions.shape} do not agree (E, T+1, 3) / (E, T, 3)")

    @property
    def episodes(self) -> int:
        return self.qpos.shape[0]

    @property
    def length(self) -> int:
        return self.actions.shape[1]

    def subset(self, idx: Any) -> Recordings:
        return Recordings(self.qpos[idx], self.qvel[idx], self.actions[idx])

    def save(self, path: Any) -> None:
        import io

        from vlarl.fileio import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, qpos=self.qpos, qvel=self.qvel, actions=self.actions)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Any) -> Recordings:
        with np.load(path) as z:
            return cls(z["qpos"], z["qvel"], z["actions"])

    def prev_action(self, e: int, t: int) -> np.ndarray:
        return self.actions[e, t - 1] if t > 0 else np.zeros(self.actions.shape[-1], self.actions.dtype)


# --- replaying recordings in a simulator ------------------------------------------------
def start_replay(sim: gym.Env, rec: Recordings, e: int, t: int) -> np.ndarray:
    """Put ``sim`` (an arm env, possibly under a ``PhysicsTwin``) in recording ``e``'s state at
    step ``t``; returns the state vector there. A delayed twin's queue is filled with the
    commands the real robot had received but not yet executed."""
    base = arm_env(sim)
    obs = base.set_sim_state({"qpos": rec.qpos[e, t], "qvel": rec.qvel[e, t], "ctrl": base.mj_data.ctrl.copy(),
                              "t": t, "last_action": rec.prev_action(e, t)})
    if isinstance(sim, PhysicsTwin):
        d = sim.twin.action_delay
        sim._queue.clear()
        sim._queue.extend(rec.prev_action(e, t - k).astype(np.float32) for k in range(d - 1, -1, -1))
    return obs["state"]


def delta_obs(state: np.ndarray, prev: np.ndarray, action: np.ndarray) -> np.ndarray:
    """What the delta and residual models see: the physical state (joint positions and
    velocities of the arm's 10-d state, not its phase: the robot's physics does not depend on
    the time in the motion, and every recording follows the same motion, so a phase input
    would let a model memorise corrections per instant rather than per state), the previous
    command and the action."""
    return np.concatenate([state[:6], prev, action]).astype(np.float32)


class OpenLoopReplay(gym.Env):
    """The delta action model's training env: windows of ``horizon`` recorded steps replayed
    open loop in ``sim``; the action is the delta added to each recorded action.

    Observation ``state``: ``delta_obs`` of the sim's state, the previous command and the
    recorded action; the critic's
    ``privileged_state``: the recorded real state now and next (what the actor never sees).
    """

    def __init__(self, sim: gym.Env, rec: Recordings, horizon: int = 20, action_penalty: float = 0.1,
                 sigma_q: float = 0.01, sigma_qd: float = 1.0) -> None:
        if horizon < 1 or horizon > rec.length:
            raise VlarlError(f"delta.horizon must be in [1, {rec.length}] (the recordings' length), got {horizon}")
        self.sim, self.rec, self.horizon = sim, rec, int(horizon)
        self.action_penalty, self.sigma_q, self.sigma_qd = action_penalty, sigma_q, sigma_qd
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (DELTA_OBS_DIM,), np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (rec.actions.shape[-1],), np.float32)
        self._e = self._t = self._end = 0
        self._state = np.zeros(10, np.float32)

    def _obs(self) -> dict[str, np.ndarray]:
        # After a window's last step (only bootstrapped from) the recording may have ended: clamp.
        t = min(self._t, self.rec.length - 1)
        return {"state": delta_obs(self._state, self.rec.prev_action(self._e, t), self.rec.actions[self._e, t])}

    def privileged_state(self) -> np.ndarray:
        e, t = self._e, min(self._t, self.rec.length - 1)
        return np.concatenate([self.rec.qpos[e, t], self.rec.qvel[e, t],
                               self.rec.qpos[e, t + 1], self.rec.qvel[e, t + 1]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._e = int(self.np_random.integers(self.rec.episodes))
        self._t = int(self.np_random.integers(self.rec.length - self.horizon + 1))
        self._end = self._t + self.horizon
        self._state = start_replay(self.sim, self.rec, self._e, self._t)
        return self._obs(), {}

    def step(self, delta):
        delta = np.clip(np.asarray(delta, np.float32), -1.0, 1.0)
        e, t = self._e, self._t
        executed = np.clip(self.rec.actions[e, t] + delta, -1.0, 1.0)
        obs, *_ = self.sim.step(executed)
        self._state, self._t = obs["state"], t + 1
        data = self.sim.unwrapped.mj_data
        q_err = float(np.sum((data.qpos - self.rec.qpos[e, t + 1]) ** 2))
        qd_err = float(np.sum((data.qvel - self.rec.qvel[e, t + 1]) ** 2))
        reward = (math.exp(-q_err / self.sigma_q) + 0.5 * math.exp(-qd_err / self.sigma_qd)
                  - self.action_penalty * float(np.linalg.norm(delta)))
        return self._obs(), reward, False, self._t >= self._end, {"q_error": math.sqrt(q_err)}


def replay_errors(sim: gym.Env, rec: Recordings, horizon: int, delta: Any = None) -> dict[str, float]:
    """Open-loop replay of every recording in windows of ``horizon`` steps (restarted from the
    recorded state at each window): mean joint error (rad), joint velocity error (rad/s) and
    end-effector error (m) against the recording, over all replayed steps. ``delta(state,
    prev, action)`` corrects each action (ASAP's aligned simulator)."""
    q_errs, qd_errs, ee_errs = [], [], []
    for e in range(rec.episodes):
        for t0 in range(0, rec.length - horizon + 1, horizon):
            state = start_replay(sim, rec, e, t0)
            for t in range(t0, t0 + horizon):
                a = rec.actions[e, t]
                if delta is not None:
                    a = np.clip(a + delta(state, rec.prev_action(e, t), a), -1.0, 1.0)
                state = sim.step(a.astype(np.float32))[0]["state"]
                data = arm_env(sim).mj_data
                q_errs.append(np.linalg.norm(data.qpos - rec.qpos[e, t + 1]))
                qd_errs.append(np.linalg.norm(data.qvel - rec.qvel[e, t + 1]))
                ee_errs.append(np.linalg.norm(_fk(data.qpos) - _fk(rec.qpos[e, t + 1])))
    return {"joint_pos_error": float(np.mean(q_errs)), "joint_vel_error": float(np.mean(qd_errs)),
            "ee_pos_error": float(np.mean(ee_errs))}


def ideal_gain_delta(state: np.ndarray, action: np.ndarray, gain: float) -> np.ndarray:
    """The exact delta for a twin whose actuators give ``gain`` x the commanded torque.

    The PD torque tau(a) = KP (pose + s a - q) - KV qd is held over the control step, so the sim
    matches the twin when tau(a + delta) = gain * tau(a): delta = (gain - 1) tau(a) / (KP s).
    """
    q, qd = state[..., 0:3], state[..., 3:6]
    return (gain - 1) * pd_torque(q, qd, action) / (KP * ACTION_SCALE)


# --- SysID ------------------------------------------------------------------------------
def sysid_search(make_sim: Any, rec: Recordings, horizon: int, params: tuple[str, ...], iterations: int = 8,
                 population: int = 24, elite: int = 6, low: float = 0.4, high: float = 2.0, max_delay: int = 2,
                 seed: int = 0) -> dict[str, Any]:
    """Fit ``params`` of a ``TwinConfig`` to the recordings by the cross-entropy method on the
    open-loop replay joint error; ``make_sim(twin)`` builds the candidate simulator.

    Continuous factors are searched in log space within [low, high]; ``action_delay`` (if
    listed) is searched over 0..max_delay, each delay with its own search.
    """
    bad = [p for p in params if p not in SYSID_PARAMS]
    if bad:
        raise VlarlError(f"sysid.params: unknown {bad}; valid: {list(SYSID_PARAMS)}")
    continuous = [p for p in params if p != "action_delay"]
    delays = range(max_delay + 1) if "action_delay" in params else [0]
    rng = np.random.default_rng(seed)
    history: list[dict[str, Any]] = []

    def cost(values: np.ndarray, delay: int) -> float:
        fields: dict[str, Any] = dict(zip(continuous, map(float, values)))
        twin = TwinConfig(**fields, action_delay=delay)
        sim = make_sim(twin)
        try:
            return replay_errors(sim, rec, horizon)["joint_pos_error"]
        finally:
            sim.close()

    best: tuple[float, np.ndarray, int] = (math.inf, np.ones(len(continuous)), 0)
    for delay in delays:
        mean, std = np.zeros(len(continuous)), np.full(len(continuous), 0.5)
        for it in range(iterations):
            logs = np.clip(mean + std * rng.standard_normal((population, len(continuous))), math.log(low), math.log(high))
            costs = np.array([cost(np.exp(x), delay) for x in logs])
            order = np.argsort(costs)
            mean, std = logs[order[:elite]].mean(0), logs[order[:elite]].std(0) + 1e-3
            if costs[order[0]] < best[0]:
                best = (float(costs[order[0]]), np.exp(logs[order[0]]), delay)
            history.append({"delay": delay, "iteration": it, "best_error": float(costs[order[0]])})
    fitted = {**dict(zip(continuous, map(float, best[1]))), "action_delay": best[2]}
    return {"twin": fitted, "replay_error": best[0], "history": history}


# --- DeltaDynamics ----------------------------------------------------------------------
class ResidualDynamics(nn.Module):
    """g(state, previous command, action) -> correction of the next (qpos, qvel)."""

    scale: torch.Tensor

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.norm = RunningNorm(DELTA_OBS_DIM)
        self.net = nn.Sequential(nn.Linear(DELTA_OBS_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 6))
        self.register_buffer("scale", torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x)) * self.scale

    @torch.no_grad()
    def predict(self, state: np.ndarray, prev: np.ndarray, action: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(delta_obs(state, prev, action))[None])[0].numpy().astype(np.float64)


def residual_dataset(sim: gym.Env, rec: Recordings) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): for every recorded step, the model's input and real_{t+1} -
    f_sim(real_t, a_t) on (qpos, qvel)."""
    xs, ys = [], []
    for e in range(rec.episodes):
        for t in range(rec.length):
            state = start_replay(sim, rec, e, t)
            a = rec.actions[e, t].astype(np.float32)
            sim.step(a)
            data = arm_env(sim).mj_data
            xs.append(delta_obs(state, rec.prev_action(e, t), a))
            ys.append(np.concatenate([rec.qpos[e, t + 1] - data.qpos, rec.qvel[e, t + 1] - data.qvel]))
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def fit_residual_dynamics(x: np.ndarray, y: np.ndarray, steps: int = 3000, batch: int = 256, lr: float = 1e-3,
                          hidden: int = 128, seed: int = 0) -> tuple[ResidualDynamics, dict[str, float]]:
    """Regress the residual with MSE on targets scaled to unit variance per dimension."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ResidualDynamics(hidden)
    X, Y = torch.as_tensor(x), torch.as_tensor(y)
    model.norm.update(X)
    model.scale.copy_(Y.std(0) + 1e-6)
    opt = torch.optim.Adam(model.net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(X), (min(batch, len(X)),), generator=gen)
        loss = (((model(X[idx]) - Y[idx]) / model.scale) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float((((model(X) - Y) / model.scale) ** 2).mean())
        baseline = float(((Y / model.scale) ** 2).mean())  # the error of predicting no residual
    return model, {"train_loss": final, "zero_residual_loss": baseline}


def twin_fields(fitted: dict[str, Any]) -> dict[str, Any]:
    """The TwinConfig keys of a SysID fit (for configs and reports)."""
    names = {f.name for f in dataclasses.fields(TwinConfig)}
    return {k: v for k, v in fitted.items() if k in names}
