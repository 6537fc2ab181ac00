"""gym-hil's Panda pick-cube with end-effector delta actions, two cameras and a scripted expert."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from typing import Any

import mujoco
import numpy as np

from vlarl.envs.mujoco_base import MujocoEnv
from vlarl.envs.rendering import close_renderer
from vlarl.errors import VlarlError, unknown

PANDA_CAMERAS = {"front": "front", "wrist": "handcam_rgb"}
EE_STEP = 0.025  # metres per unit action, gym-hil's default
LIFT_FOR_SUCCESS = 0.1
_BLOCK_XY_LOW, _BLOCK_XY_HIGH = np.array([0.3, -0.15]), np.array([0.5, 0.15])
PROPRIO_DIM = 18  # joint pos 7, joint vel 7, gripper 1, tcp xyz 3


class PandaPickCubeEnv(MujocoEnv):
    """Lift the cube 10 cm. Action: (dx, dy, dz, gripper) in [-1, 1]; gripper +1 closes.

    ``state`` is the 18-d proprio in ``pixels`` mode and proprio + cube xyz otherwise.
    """

    gripper_action = 3  # +1 closes, -1 opens

    def __init__(
        self,
        obs_mode: str = "state",
        image_size: int = 84,
        cameras: tuple[str, ...] = ("front", "wrist"),
        episode_length: int = 100,
        terminate_on_success: bool = True,
        reward: str = "sparse",
        random_block: bool = True,
        fast_render: bool = True,
    ) -> None:
        from gym_hil.envs.panda_pick_gym_env import PandaPickCubeGymEnv

        if reward not in ("dense", "sparse"):
            raise VlarlError(f"panda/pick-cube: reward must be 'dense' or 'sparse', got {reward!r}")
        for cam in cameras:
            if cam not in PANDA_CAMERAS:
                raise VlarlError(unknown("camera", cam, PANDA_CAMERAS, "panda/pick-cube"))
        self._hil = PandaPickCubeGymEnv(image_obs=False, reward_type=reward, random_block_position=False)
        close_renderer(self._hil._viewer)  # it opens a renderer we never use; ours is below
        self._hil._viewer = None
        self.random_block = random_block
        self.reward_type = reward
        super().__init__(
            task="pick-cube",
            instruction="pick up the cube",
            state_dim=PROPRIO_DIM if obs_mode == "pixels" else PROPRIO_DIM + 3,
            action_dim=4,
            obs_mode=obs_mode,
            cameras=tuple(cameras),
            image_size=image_size,
            episode_length=episode_length,
            terminate_on_success=terminate_on_success,
        )
        self._init_mujoco(self._hil.model, self._hil.data, PANDA_CAMERAS, fast_render)

    # --- simulator ----------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator) -> None:
        hil = self._hil
        hil.reset()
        if self.random_block:
            xy = rng.uniform(_BLOCK_XY_LOW, _BLOCK_XY_HIGH)
            hil.data.jnt("block").qpos[:3] = (*xy, hil._block_z)
            mujoco.mj_forward(hil.model, hil.data)
        self._z_init = float(hil.data.sensor("block_pos").data[2])

    def _step_sim(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        hil = self._hil
        hil.apply_action(np.concatenate([action[:3] * EE_STEP, np.zeros(3), action[3:4]]))
        block = self._block()
        lift = block[2] - self._z_init
        success = bool(lift > LIFT_FOR_SUCCESS and np.linalg.norm(block - self._tcp()) < 0.05)
        if self.reward_type == "sparse":
            reward = float(success)
        else:
            reward = float(hil._compute_reward())
        out_of_bounds = bool(np.any(block[:2] < _BLOCK_XY_LOW - 0.05) or np.any(block[:2] > _BLOCK_XY_HIGH + 0.05))
        return reward, success, {"failed": out_of_bounds and not success}

    def _tcp(self) -> np.ndarray:
        return self._hil.data.sensor("2f85/pinch_pos").data.copy()

    def _block(self) -> np.ndarray:
        return self._hil.data.sensor("block_pos").data.copy()

    def _gripper(self) -> float:
        """Gripper command in [0, 1]; 1 is closed."""
        hil = self._hil
        return float(hil.data.ctrl[hil._gripper_ctrl_id] / 255.0)

    def proprio(self) -> np.ndarray:
        hil = self._hil
        qpos = hil.data.qpos[hil._panda_dof_ids]
        qvel = hil.data.qvel[hil._panda_dof_ids]
        return np.concatenate([qpos, qvel, [self._gripper()], self._tcp()]).astype(np.float32)

    def _state(self) -> np.ndarray:
        if self.obs_mode == "pixels":
            return self.proprio()
        return np.concatenate([self.proprio(), self._block().astype(np.float32)])

    # --- expert -------------------------------------------------------------------------
    def expert_action(self) -> np.ndarray:
        """Approach above the cube, descend, close, lift. Decided from the state alone, so
        it recovers when noise or a human knocks it off course."""
        tcp, block, grip = self._tcp(), self._block(), self._gripper()
        held = grip > 0.9 and np.linalg.norm(tcp - block) < 0.03
        if held:
            target, close = np.array([block[0], block[1], self._z_init + 0.2]), 1.0
        elif np.linalg.norm(tcp[:2] - block[:2]) > 0.012:
            hover = block[2] + 0.06
            # Rise before moving sideways so the open fingers do not sweep the cube away.
            z = hover if tcp[2] < hover - 0.02 and np.linalg.norm(tcp[:2] - block[:2]) > 0.03 else max(tcp[2], hover)
            target, close = np.array([block[0], block[1], z]), -1.0
        elif tcp[2] - block[2] > 0.008:
            target, close = block.copy(), -1.0
        else:
            target, close = block.copy(), 1.0
        move = np.clip((target - tcp) / EE_STEP, -1.0, 1.0)
        return np.concatenate([move, [close]]).astype(np.float32)

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """End-effector position (3,) and rotation matrix (3, 3) in the world frame."""
        site = self._hil.data.site("pinch")
        return site.xpos.copy(), site.xmat.reshape(3, 3).copy()

    @property
    def position_slices(self) -> tuple[slice, ...]:
        """Where ``state`` holds world positions: the tcp, and the cube outside pixels mode."""
        tcp = slice(PROPRIO_DIM - 3, PROPRIO_DIM)
        return (tcp,) if self.obs_mode == "pixels" else (tcp, slice(PROPRIO_DIM, PROPRIO_DIM + 3))

    def privileged_state(self) -> np.ndarray:
        return np.concatenate([self.proprio(), self._block().astype(np.float32)])

    @property
    def spec_name(self) -> str:
        return "panda/pick-cube"
