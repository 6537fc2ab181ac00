"""Atomic checkpoints: weights as safetensors, optimiser + RNG + counters beside them.

    checkpoints/step_000001000/{<module>.safetensors, state.pt, meta.json}
    checkpoints/latest             name of the newest complete checkpoint

A checkpoint is assembled in a hidden temporary directory and renamed into place only when
every file is written and fsynced; ``meta.json`` (written last) records each file's size.
A crash at any moment leaves every earlier checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from vlarl.errors import CheckpointError
from vlarl.fileio import atomic_write_text, fsync_dir
from vlarl.runtime.seeding import get_rng_state, set_rng_state


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    root: str | Path,
    step: int,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    counters: Mapping[str, Any] | None = None,
    generators: Mapping[str, np.random.Generator] | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:09d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = []
    for mod_name, module in modules.items():
        path = tmp / f"{mod_name}.safetensors"
        save_model(module, str(path))
        files.append(path)
    state = {
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "counters": dict(counters or {}),
        "rng": get_rng_state(dict(generators or {})),
    }
    torch.save(state, tmp / "state.pt")
    files.append(tmp / "state.pt")
    for f in files:
        _fsync_file(f)
    meta = {
        "step": step,
        "time": time.time(),
        "modules": list(modules),
        "files": {f.name: f.stat().st_size for f in files},
    }
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
    final = root / name
    if final.exists():  # re-saving a step: move the old one aside first, then drop it
        old = root / f".{name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", name + "\n")
    _prune(root, keep, protect=final)
    return final


def _complete(path: Path) -> bool:
    """True if ``path`` is a checkpoint whose files all exist with their recorded sizes."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        return all((path / f).stat().st_size == size for f, size in meta["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and _complete(p))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint (the ``latest`` pointer if it is intact)."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if candidate.is_dir() and _complete(candidate):
            return candidate
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: str | Path,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    generators: Mapping[str, np.random.Generator] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimiser and RNG state) in place; return the saved counters.

    ``path`` is a checkpoint directory or a root holding several (the newest is taken).
    """
    path = Path(path)
    if not (path / "meta.json").exists():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: no complete checkpoint found")
        path = latest
    if not _complete(path):
        raise CheckpointError(f"{path}: checkpoint is incomplete or its files were altered")
    meta = json.loads((path / "meta.json").read_text())
    missing = [m for m in modules if f"{m}.safetensors" not in meta["files"]]
    if missing:
        raise CheckpointError(f"{path}: no weights for {missing}; it holds {meta['modules']}")
    for mod_name, module in modules.items():
        try:
            load_model(module, str(path / f"{mod_name}.safetensors"))
        except (RuntimeError, OSError) as err:
            raise CheckpointError(f"{path / (mod_name + '.safetensors')}: cannot load into {mod_name} ({err})") from err
    # Our own file, written by save_checkpoint: it holds RNG tuples that weights_only rejects.
    state = torch.load(path / "state.pt", weights_only=False)
    for opt_name, opt in (optimizers or {}).items():
        if opt_name not in state["optimizers"]:
            raise CheckpointError(f"{path}: no optimiser state for {opt_name!r}")
        opt.load_state_dict(state["optimizers"][opt_name])
    if restore_rng:
        set_rng_state(state["rng"], dict(generators or {}))
    return state["counters"]


def _prune(root: Path, keep: int, protect: Path) -> None:
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
