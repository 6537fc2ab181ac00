"""Env names, their classes and option checking. Classes are imported on first use, so
listing names never loads MuJoCo."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import gymnasium as gym

from vlarl.envs.instructions import METAWORLD_INSTRUCTIONS
from vlarl.errors import VlarlError, unknown

_FAMILIES = {  # name prefix -> (module, class)
    "toy/": ("vlarl.envs.toy", "ToyReachEnv"),
    "panda/": ("vlarl.envs.panda", "PandaPickCubeEnv"),
    "metaworld/": ("vlarl.envs.metaworld_env", "MetaWorldEnv"),
    "arm/": ("vlarl.envs.arm", "ArmTrackEnv"),
}

ENV_NAMES: tuple[str, ...] = (
    "toy/reach",
    "panda/pick-cube",
    "arm/track",
    *(f"metaworld/{task}" for task in METAWORLD_INSTRUCTIONS),
)


def env_class(name: str) -> type[Any]:
    """The class behind an env name (its constructor's keywords are the valid options)."""
    if name not in ENV_NAMES:
        raise VlarlError(unknown("env", name, ENV_NAMES))
    module, cls = next(v for prefix, v in _FAMILIES.items() if name.startswith(prefix))
    return getattr(importlib.import_module(module), cls)


def valid_options(name: str) -> list[str]:
    """Keyword options ``make(name, ...)`` accepts."""
    params = inspect.signature(env_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "task")] + ["twin"]


def make(name: str, **options: Any) -> gym.Env:
    """Build a vlarl env by name, e.g. ``make("metaworld/drawer-open", obs_mode="pixels")``.

    ``twin=TwinConfig(...)`` (or a dict of its fields) returns the env's physics twin.
    """
    cls = env_class(name)
    valid = valid_options(name)
    for key in options:
        if key not in valid:
            raise VlarlError(unknown("option", key, valid, where=name))
    twin = options.pop("twin", None)
    if isinstance(options.get("cameras"), str):
        options["cameras"] = (options["cameras"],)
    elif "cameras" in options:
        options["cameras"] = tuple(options["cameras"])
    env = cls(name.split("/", 1)[1], **options) if name.startswith("metaworld/") else cls(**options)
    if twin is not None:
        from vlarl.envs.twin import PhysicsTwin, TwinConfig

        env = PhysicsTwin(env, twin if isinstance(twin, TwinConfig) else TwinConfig.from_dict(dict(twin)))
    return env
