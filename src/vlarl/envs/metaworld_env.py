"""The 50 Meta-World v3 tasks with the vlarl observation contract and their scripted experts."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import warnings
from typing import Any

import numpy as np

from vlarl.envs.instructions import METAWORLD_INSTRUCTIONS
from vlarl.envs.mujoco_base import MujocoEnv
from vlarl.errors import VlarlError

# Meta-World's corner cameras are defined upside down; their images are flipped upright.
_UPSIDE_DOWN = ("corner", "corner2", "corner3", "corner4")
PROPRIO_DIM = 4  # hand xyz + gripper opening


class MetaWorldEnv(MujocoEnv):
    """One Meta-World v3 task; object and goal positions are randomised on every reset.

    ``state`` is Meta-World's 39-d vector (goal visible) in ``state`` modes and the 4-d
    proprio (hand xyz, gripper opening) in ``pixels`` mode.
    """

    gripper_action = 3  # +1 closes, -1 opens

    def __init__(
        self,
        task: str,
        obs_mode: str = "state",
        image_size: int = 84,
        cameras: tuple[str, ...] = ("corner",),
        episode_length: int = 200,
        terminate_on_success: bool = True,
        reward: str = "dense",
        fast_render: bool = True,
    ) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        if reward not in ("dense", "sparse"):
            raise VlarlError(f"metaworld/{task}: reward must be 'dense' or 'sparse', got {reward!r}")
        mw = ALL_V3_ENVIRONMENTS[f"{task}-v3"]()
        # What Meta-World's goal-observable variants do, without their fixed camera settings:
        # goal in the observation, a fresh object/goal position drawn from np_random per reset.
        mw._partially_observable = False
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        mw._set_task_called = True
        if "sawyer_observation_space" in mw.__dict__:
            del mw.sawyer_observation_space  # cached with the goal hidden
        mw.max_path_length = episode_length
        self._mw = mw
        policy_cls: Any = ENV_POLICY_MAP[f"{task}-v3"]  # typed as the abstract base
        self._policy = policy_cls()
        self._raw_obs = np.zeros(39)
        self.reward_type = reward
        super().__init__(
            task=task,
            instruction=METAWORLD_INSTRUCTIONS[task],
            state_dim=PROPRIO_DIM if obs_mode == "pixels" else 39,
            action_dim=4,
            obs_mode=obs_mode,
            cameras=tuple(cameras),
            image_size=image_size,
            episode_length=episode_length,
            terminate_on_success=terminate_on_success,
        )
        self._init_mujoco(mw.model, mw.data, {}, fast_render, flip=_UPSIDE_DOWN)

    def _reset_sim(self, rng: np.random.Generator) -> None:
        self._mw.seed(int(rng.integers(2**31)))
        self._raw_obs, _ = self._mw.reset()

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        self._raw_obs, reward, _, _, info = self._mw.step(action)
        success = bool(info["success"])
        if self.reward_type == "sparse":
            reward = float(success)
        return float(reward), success, {}

    def _state(self) -> np.ndarray:
        return self.proprio() if self.obs_mode == "pixels" else self._raw_obs

    def proprio(self) -> np.ndarray:
        return self._raw_obs[:PROPRIO_DIM].astype(np.float32)

    def expert_action(self) -> np.ndarray:
        with warnings.catch_warnings():  # Meta-World's policies warn that they saturate; we clip
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(self._raw_obs)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def privileged_state(self) -> np.ndarray:
        return self._raw_obs.astype(np.float32)

    @property
    def spec_name(self) -> str:
        return f"metaworld/{self.task}"

    def close(self) -> None:
        super().close()
        self._mw.close()
