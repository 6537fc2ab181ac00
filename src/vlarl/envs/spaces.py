"""The observation contract shared by every vlarl env (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from vlarl.errors import VlarlError, unknown

OBS_MODES = ("state", "pixels", "state+pixels")


def check_obs_mode(obs_mode: str, where: str = "") -> None:
    if obs_mode not in OBS_MODES:
        raise VlarlError(unknown("obs_mode", obs_mode, OBS_MODES, where))


def observation_space(state_dim: int, cameras: Sequence[str], image_size: int, with_pixels: bool) -> spaces.Dict:
    """Dict(state=float32 vector, pixels=Dict(camera=uint8 HWC)) as DESIGN.md fixes it."""
    parts: dict[str, spaces.Space] = {
        "state": spaces.Box(-np.inf, np.inf, (state_dim,), dtype=np.float32),
    }
    if with_pixels:
        parts["pixels"] = spaces.Dict(
            {cam: spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8) for cam in cameras}
        )
    return spaces.Dict(parts)


def action_space(dim: int) -> spaces.Box:
    return spaces.Box(-1.0, 1.0, (dim,), dtype=np.float32)


def env_dims(env: Any) -> tuple[int, int, dict[str, tuple[int, ...]] | None]:
    """(state_dim, action_dim, cameras) of an env with the contract's spaces; ``cameras`` maps
    each camera to its image shape, None without pixels."""
    space, act = env.observation_space, env.action_space
    if not isinstance(space, spaces.Dict) or "state" not in space.spaces or not isinstance(act, spaces.Box):
        raise VlarlError(f"env {getattr(env, 'spec', None) or type(env).__name__}: expected Dict(state, pixels?) "
                         f"observations and Box actions, got {space} and {act}")
    state = space.spaces["state"]
    if not isinstance(state, spaces.Box):
        raise VlarlError(f"env {type(env).__name__}: observation 'state' must be a Box, got {state}")
    pixels = space.spaces.get("pixels")
    cameras = {c: tuple(s.shape or ()) for c, s in pixels.spaces.items()} if isinstance(pixels, spaces.Dict) else None
    return int(state.shape[0]), int(act.shape[0]), cameras
