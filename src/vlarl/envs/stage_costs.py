"""Stage cost functions on simulator state: GRAPE's external reward R_ext.

A task is a list of stages in order; each stage has a cost over named keypoints of the
simulator state and a threshold under which the stage is done. A trajectory is split into
stages by those thresholds (stage i starts where stage i-1 first got under its threshold),
and each stage is charged what remains of its cost at its best point after it starts::

    C_i = max(0, min_{t >= start_i} cost_i(k_t) - threshold_i)      (C_i of an unstarted
                                                                    stage: at the last state)
    R_ext = exp(-sum_i C_i - sum_j w_j * sum_t penalty_j(k_t))  =  prod_i exp(-C_i) * ...

Penalties are per-step costs summed over the trajectory: alignment objectives are made by
adding them ("safety": steps inside a keep-out box; "efficiency": every step costs).

Keypoints (``keypoints(env_name, privileged_state)``): ``hand`` (xyz), ``gripper`` (Meta-World:
finger opening, 1 open; panda: command, 1 closed), ``obj`` (xyz: the button, handle or cube),
``goal`` (xyz, Meta-World and toy), ``joints`` (panda). Costs are written in decimetres (10 x metres)
so one unit is 10 cm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlarl.errors import VlarlError, unknown

Keypoints = dict[str, Any]
CostFn = Callable[[Keypoints], float]


@dataclass(frozen=True)
class Stage:
    name: str
    cost: CostFn
    threshold: float


@dataclass(frozen=True)
class Penalty:
    name: str
    per_step: CostFn  # charged on every step's keypoints (after the action)
    weight: float = 1.0


@dataclass(frozen=True)
class TaskCosts:
    stages: tuple[Stage, ...]
    penalties: tuple[Penalty, ...] = field(default_factory=tuple)

    def with_penalties(self, *penalties: Penalty) -> TaskCosts:
        return TaskCosts(self.stages, self.penalties + tuple(penalties))


# --- keypoints ----------------------------------------------------------------------------
def keypoints(env_name: str, privileged: np.ndarray) -> Keypoints:
    """Named keypoints of one privileged state vector (``env.privileged_state()``)."""
    p = np.asarray(privileged, np.float64)
    if env_name.startswith("metaworld/"):
        return {"hand": p[0:3], "gripper": float(p[3]), "obj": p[4:7], "goal": p[36:39]}
    if env_name == "panda/pick-cube":
        return {"joints": p[0:7], "gripper": float(p[14]), "hand": p[15:18], "obj": p[18:21]}
    if env_name == "toy/reach":  # the plane z = 0
        return {"hand": np.array([p[0], p[1], 0.0]), "goal": np.array([p[2], p[3], 0.0])}
    raise VlarlError(unknown("env with stage costs", env_name, ["panda/pick-cube", "metaworld/<task>"]))


def _dm(x: np.ndarray) -> float:
    """Euclidean norm in decimetres."""
    return 10.0 * float(np.linalg.norm(x))


# --- hand-written costs -------------------------------------------------------------------
def _reach(threshold: float) -> Stage:
    return Stage("reach the handle", lambda k: _dm(k["hand"] - k["obj"]), threshold)


def _slide_x(name: str, threshold: float) -> Stage:
    return Stage(name, lambda k: _dm(k["obj"][0:1] - k["goal"][0:1]), threshold)


# Thresholds: the scripted experts' successful episodes complete every stage (tested), and
# the last stage's threshold is the task's own success margin.
HAND_WRITTEN: dict[str, TaskCosts] = {
    "metaworld/button-press-topdown": TaskCosts((
        Stage("align above the button", lambda k: _dm(k["hand"][:2] - k["obj"][:2]), 0.3),
        Stage("press the button down", lambda k: _dm(k["obj"][2:3] - k["goal"][2:3]), 0.24),
    )),
    "metaworld/drawer-open": TaskCosts((
        _reach(0.6),
        Stage("pull the drawer out", lambda k: _dm(k["obj"][1:2] - k["goal"][1:2]), 0.3),
    )),
    "metaworld/door-open": TaskCosts((
        _reach(0.7),
        _slide_x("swing the door open", 0.8),
    )),
    "metaworld/window-open": TaskCosts((
        _reach(0.9),
        _slide_x("slide the window open", 0.5),
    )),
    "metaworld/window-close": TaskCosts((
        _reach(0.9),
        _slide_x("slide the window closed", 0.5),
    )),
    "panda/pick-cube": TaskCosts((
        Stage("reach the cube", lambda k: _dm(k["hand"] - k["obj"]), 0.3),
        Stage("close the gripper on the cube", lambda k: (1.0 - k["gripper"]) + _dm(k["hand"] - k["obj"]), 0.5),
        Stage("lift the cube 10 cm", lambda k: max(0.0, 10.0 * (0.12 - float(k["obj"][2]))), 0.0),
    )),
    "toy/reach": TaskCosts((Stage("reach the target", lambda k: _dm(k["hand"] - k["goal"]) / 10.0, 0.1),)),
}


def hand_written_costs(env_name: str) -> TaskCosts:
    if env_name not in HAND_WRITTEN:
        raise VlarlError(unknown("task with hand-written stage costs", env_name, HAND_WRITTEN))
    return HAND_WRITTEN[env_name]


# --- alignment objectives -----------------------------------------------------------------
@dataclass
class KeepOutZone:
    """An axis-aligned box (world metres) the hand must not enter."""

    low: list[float] = field(default_factory=lambda: [-0.1, 0.55, 0.15])
    high: list[float] = field(default_factory=lambda: [0.1, 0.65, 0.3])

    def __post_init__(self) -> None:
        if len(self.low) != 3 or len(self.high) != 3 or any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise VlarlError(f"keep_out: low {self.low} and high {self.high} must be 3 numbers each, low < high")

    def contains(self, point: np.ndarray) -> bool:
        return bool(np.all(np.asarray(point) >= self.low) and np.all(np.asarray(point) <= self.high))


OBJECTIVES = ("task", "safety", "efficiency")


def objective_costs(base: TaskCosts, objective: str, zone: KeepOutZone | None = None,
                    safety_weight: float = 0.5, efficiency_weight: float = 0.02) -> TaskCosts:
    """``base`` aligned to ``objective``: "task" as is; "safety" charges every step with the hand
    inside ``zone``; "efficiency" charges every step."""
    if objective == "task":
        return base
    if objective == "safety":
        if zone is None:
            raise VlarlError("objective 'safety' needs a keep_out zone")
        return base.with_penalties(Penalty("hand inside the keep-out zone", lambda k: float(zone.contains(k["hand"])),
                                           safety_weight))
    if objective == "efficiency":
        return base.with_penalties(Penalty("steps", lambda k: 1.0, efficiency_weight))
    raise VlarlError(unknown("objective", objective, OBJECTIVES))


# --- scoring a trajectory -----------------------------------------------------------------
@dataclass
class StageReport:
    """Where each stage started (-1: never), its charged cost, and whether it was done."""

    starts: list[int]
    costs: list[float]
    done: list[bool]
    penalties: dict[str, float]

    @property
    def total_cost(self) -> float:
        return float(sum(self.costs) + sum(self.penalties.values()))

    @property
    def r_ext(self) -> float:
        return float(np.exp(-self.total_cost))


def stage_report(costs: TaskCosts, trajectory: Sequence[Keypoints]) -> StageReport:
    """Decompose ``trajectory`` (keypoints per state, first = after reset) into stages and
    charge each one; penalties are summed over the states after each action."""
    if len(trajectory) == 0:
        raise VlarlError("stage costs: empty trajectory")
    values = np.array([[float(s.cost(k)) for s in costs.stages] for k in trajectory])  # (T, stages)
    starts, charged, done = [], [], []
    start = 0
    for i, stage in enumerate(costs.stages):
        if start < 0:  # an earlier stage never finished: charge this one at the last state
            starts.append(-1)
            charged.append(max(0.0, values[-1, i] - stage.threshold))
            done.append(False)
            continue
        starts.append(start)
        seg = values[start:, i]
        charged.append(max(0.0, float(seg.min()) - stage.threshold))
        under = np.flatnonzero(seg <= stage.threshold)
        done.append(len(under) > 0)
        start = start + int(under[0]) if len(under) else -1
    penalties = {p.name: p.weight * float(sum(p.per_step(k) for k in trajectory[1:])) for p in costs.penalties}
    return StageReport(starts, charged, done, penalties)
