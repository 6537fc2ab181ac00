"""Environments: ``make(name, **options)``, ``make_vec(name, n)``, scripted experts, twins.

Names: ``toy/reach``, ``panda/pick-cube``, ``arm/track`` (ASAP's motion tracking) and ``metaworld/<task>`` for the 50 Meta-World v3
tasks. Every env keeps DESIGN.md's observation contract and reports ``info["is_success"]``.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from vlarl.envs.experts import ScriptedExpert
from vlarl.envs.registry import ENV_NAMES, env_class, make, valid_options
from vlarl.envs.twin import PhysicsTwin, TwinConfig
from vlarl.envs.vector import make_vec, make_vec_mixed

__all__ = [
    "ENV_NAMES",
    "PhysicsTwin",
    "ScriptedExpert",
    "TwinConfig",
    "env_class",
    "make",
    "make_vec",
    "make_vec_mixed",
    "valid_options",
]
