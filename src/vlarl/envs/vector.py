"""Envs stepped in parallel worker processes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from vlarl.envs.registry import make
from vlarl.errors import VlarlError


def make_vec(
    name: str,
    n: int,
    *,
    asynchronous: bool = True,
    context: str | None = "forkserver",
    wrappers: Sequence[Callable[[gym.Env], gym.Env]] = (),
    **options: Any,
) -> gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv:
    """``n`` copies of ``make(name, **options)``, one per process when ``asynchronous``.

    Episodes reset automatically in the step that ends them (gymnasium's SAME_STEP mode:
    the final observation is in ``info["final_obs"]``). Worker processes start from a
    fork server so that no rendering context of the parent is inherited. Seed with
    ``vec.reset(seed=s)``: worker i gets seed s + i. ``wrappers`` (picklable, e.g. classes)
    wrap each env, innermost first.
    """
    if n < 1:
        raise VlarlError(f"make_vec: n must be >= 1, got {n}")
    return make_vec_mixed([(name, options)] * n, asynchronous=asynchronous, context=context, wrappers=wrappers)


def make_vec_mixed(
    specs: list[tuple[str, dict[str, Any]]],
    *,
    asynchronous: bool = True,
    context: str | None = "forkserver",
    wrappers: Sequence[Callable[[gym.Env], gym.Env]] = (),
) -> gym.vector.SyncVectorEnv | gym.vector.AsyncVectorEnv:
    """One env per ``(name, options)``, e.g. several tasks side by side for multi-task RL
    (their observation and action spaces must match). Same autoreset and seeding as
    ``make_vec``."""
    if not specs:
        raise VlarlError("make_vec_mixed: no envs given")
    fns = [functools.partial(_make_wrapped, name, options, tuple(wrappers)) for name, options in specs]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, shared_memory=True, context=context, autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def _make_wrapped(name: str, options: dict[str, Any], wrappers: tuple[Callable[[gym.Env], gym.Env], ...]) -> gym.Env:
    env = make(name, **options)
    for wrap in wrappers:
        env = wrap(env)
    return env
