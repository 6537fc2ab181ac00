"""Seeding and RNG state capture, so a resumed run draws the same numbers it would have.

The captured state is made of tuples, ints, numpy arrays and uint8 tensors only, so it goes
into a checkpoint's JSON + safetensors state file (``vlarl.runtime.statefile``) as it is.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

Generator = np.random.Generator | torch.Generator  # a recipe's own random streams


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy's global RNG and torch (CPU and CUDA); return a fresh Generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def get_rng_state(generators: Mapping[str, Generator] | None = None) -> dict[str, Any]:
    """Python's, NumPy's and torch's global RNG states and those of ``generators`` (NumPy
    Generators or torch Generators, by name)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state
                       for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, Generator] | None = None) -> None:
    """Put back what ``get_rng_state`` captured. Raises ``KeyError`` naming a generator the
    state does not hold, ``TypeError``/``ValueError`` for a state of the wrong form."""
    saved = state["generators"]
    missing = [name for name in (generators or {}) if name not in saved]
    if missing:
        raise KeyError(f"no RNG state for generator(s) {missing}; the checkpoint holds {sorted(saved)}")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            gen.set_state(saved[name])
        else:
            gen.bit_generator.state = saved[name]
