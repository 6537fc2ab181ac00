"""Atomic, verified checkpoints with no pickle in them.

    checkpoints/step_000001000/<module>.safetensors   weights
    checkpoints/step_000001000/state.json             counters, RNG state and the tree of the
    checkpoints/step_000001000/state.safetensors      optimiser state, its tensors (statefile.py)
    checkpoints/step_000001000/meta.json              step, modules, each file's size and sha256
    checkpoints/latest                                name of the newest checkpoint (for people)

A checkpoint is assembled in a hidden temporary directory and renamed into place only when
every file is written and fsynced, ``meta.json`` last; a crash at any moment leaves every
earlier checkpoint intact, and never a damaged newest one. So a damaged newest checkpoint
(a truncated copy, flipped bits) is refused, by name, rather than passed over in silence:
``latest_checkpoint(..., allow_older=True)`` is the explicit, announced fallback.

Loading parses JSON and safetensors only: a crafted checkpoint cannot run code. A checkpoint
of an older vlarl (its state in a pickled ``state.pt``) is refused with that reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from vlarl.errors import CheckpointError
from vlarl.fileio import atomic_write_text, fsync_dir
from vlarl.runtime.seeding import Generator, get_rng_state, set_rng_state
from vlarl.runtime.statefile import file_problem, load_state, save_state, sha256_file

FORMAT = 2  # 1: sizes only, state in a pickled state.pt
STATE = "state.json"
_NAME = re.compile(r"step_(\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
OLDER_FLAG = "--resume-from-older"  # the command-line spelling of allow_older=True


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(
    root: str | Path,
    step: int,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, Any] | None = None,
    counters: Mapping[str, Any] | None = None,
    generators: Mapping[str, Generator] | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the newest ``keep``.

    ``optimizers`` are anything with ``state_dict()``; ``counters`` any state tree
    (``vlarl.runtime.statefile``): a value it cannot hold is a ``TypeError`` naming its key."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:09d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    digests: dict[str, str] = {}
    for mod_name, module in modules.items():
        path = tmp / f"{mod_name}.safetensors"
        save_model(module, str(path))
        digests[path.name] = sha256_file(path)
    state = {
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "counters": dict(counters or {}),
        "rng": get_rng_state(dict(generators or {})),
    }
    digests.update(save_state(tmp / STATE, state))
    for f in digests:
        _fsync_file(tmp / f)
    meta = {
        "format": FORMAT,
        "step": step,
        "time": time.time(),
        "modules": list(modules),
        "files": {f: {"size": (tmp / f).stat().st_size, "sha256": h} for f, h in digests.items()},
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


# --- verification -----------------------------------------------------------------------
def checkpoint_step(path: str | Path) -> int | None:
    """The step of a checkpoint directory named ``step_<N>``, else ``None``."""
    match = _NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Every ``step_<N>`` directory under ``root``, intact or not, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) is not None and p.is_dir()]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def read_meta(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """``path``'s meta.json, checked: every file it lists present with its size and (with
    ``verify``) its sha256. Raises ``CheckpointError`` naming the file and what is wrong."""
    path = Path(path)
    if (path / "state.pt").exists():
        raise CheckpointError(
            f"{path / 'state.pt'}: this checkpoint keeps its optimiser, RNG and counters in a pickle "
            "(torch.save, written by an older vlarl). vlarl no longer loads pickled state, since a crafted "
            "one runs code when loaded; start a new run (its weights, *.safetensors, can still be read "
            "with safetensors)")
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path}: missing, so {path.name} is not a complete checkpoint") from None
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{meta_path}: unreadable JSON ({type(err).__name__}: {err})") from None
    _check_meta(meta, meta_path)
    step = checkpoint_step(path)
    if step is not None and meta["step"] != step:
        raise CheckpointError(f"{meta_path}: records step {meta['step']}, but the directory is {path.name}")
    for name, entry in meta["files"].items():
        if verify:
            problem = file_problem(path / name, entry["size"], entry["sha256"], "meta.json")
        else:
            size = (path / name).stat().st_size if (path / name).exists() else None
            problem = None if size == entry["size"] else (
                "missing (meta.json lists it)" if size is None
                else f"{size} bytes, meta.json records {entry['size']} (truncated or overwritten)")
        if problem:
            raise CheckpointError(f"{path / name}: {problem}")
    return meta


def _check_meta(meta: Any, meta_path: Path) -> None:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: not a JSON object")
    files = meta.get("files")
    if isinstance(files, dict) and any(type(v) is int for v in files.values()):
        raise CheckpointError(f"{meta_path}: an older vlarl's checkpoint (file sizes, no sha256); vlarl no "
                              "longer loads those, whose state was pickled; start a new run")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: checkpoint format {meta.get('format')!r}; this vlarl reads {FORMAT}")
    if type(meta.get("step")) is not int or not isinstance(files, dict):
        raise CheckpointError(f"{meta_path}: needs an int \"step\" and a \"files\" object")
    modules = meta.get("modules")
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise CheckpointError(f"{meta_path}: \"modules\" must be a list of names")
    for name, entry in files.items():
        if Path(name).name != name or name in ("", ".", ".."):  # names inside the directory only
            raise CheckpointError(f"{meta_path}: file name {name!r} is not a plain file name")
        if (not isinstance(entry, dict) or type(entry.get("size")) is not int
                or not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"])):
            raise CheckpointError(f"{meta_path}: files[{name!r}] must be {{\"size\": int, \"sha256\": hex}}")
    needed = [STATE, "state.safetensors", *(f"{m}.safetensors" for m in modules)]
    unlisted = [n for n in needed if n not in files]
    if unlisted:
        raise CheckpointError(f"{meta_path}: does not list {unlisted}")


def checkpoint_problem(path: str | Path, verify: bool = True) -> str | None:
    """What is wrong with checkpoint ``path`` (a message naming the file), or ``None``."""
    try:
        read_meta(path, verify)
    except CheckpointError as err:
        return str(err)
    return None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoints under ``root`` whose files are all there with their recorded sizes, oldest
    first (a cheap check, for pruning; loading also checks every file's sha256)."""
    return [p for p in checkpoint_dirs(root) if checkpoint_problem(p, verify=False) is None]


def latest_checkpoint(root: str | Path, allow_older: bool = False,
                      log: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint under ``root`` (every file's sha256 checked); ``None`` when there
    is none at all.

    A damaged newest checkpoint raises ``CheckpointError`` naming it, what is wrong, and the
    steps that falling back would lose. With ``allow_older`` the newest intact one is
    returned instead and the fallback announced through ``log`` (default: stderr). A root
    whose every checkpoint is damaged raises either way."""
    dirs = checkpoint_dirs(root)[::-1]  # newest first
    damaged: list[tuple[Path, str]] = []
    for path in dirs:
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                if not allow_older:
                    raise CheckpointError(_refusal(damaged, path))
                (log or _stderr)(fallback_message(damaged, path))
            return path
        damaged.append((path, problem))  # and on to an older one: what falling back would cost
    if damaged:
        raise CheckpointError(_refusal(damaged, None))
    return None


def _lost(damaged: list[tuple[Path, str]], used: Path | None) -> int:
    return (checkpoint_step(damaged[0][0]) or 0) - ((checkpoint_step(used) or 0) if used else 0)


def _refusal(damaged: list[tuple[Path, str]], older: Path | None) -> str:
    newest, problem = damaged[0]
    head = f"the newest checkpoint {newest} is damaged: {problem}."
    if older is None:
        rest = "; ".join(f"{p.name}: {why}" for p, why in damaged[1:])
        return (f"{head} No intact checkpoint is left under {newest.parent}"
                + (f" ({rest})" if rest else "") + "; nothing was changed")
    return (f"{head} Falling back to {older.name} (the newest intact one) would lose {_lost(damaged, older)} "
            f"steps; to train on from it, resume with {OLDER_FLAG} (Run.resume(..., allow_older=True)), which "
            f"sets the damaged checkpoint aside, not deleted; to only use it, name it: {older}")


def fallback_message(damaged: list[tuple[Path, str]], used: Path) -> str:
    """The announcement of a resume from ``used`` past the damaged newer checkpoints."""
    names = ", ".join(p.name for p, _ in damaged)
    return (f"vlarl: checkpoint {damaged[0][0]} is damaged ({damaged[0][1]}); resuming from {used.name} instead, "
            f"losing {_lost(damaged, used)} steps (damaged, set aside: {names})")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the way (``step_<N>.damaged``), so later saves and
    resumes pass it by; nothing is deleted."""
    target = path.with_name(path.name + ".damaged")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{n}")
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


# --- loading ----------------------------------------------------------------------------
def load_checkpoint(
    path: str | Path,
    modules: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, Any] | None = None,
    generators: Mapping[str, Generator] | None = None,
    restore_rng: bool = True,
    allow_older: bool = False,
) -> dict[str, Any]:
    """Load weights (and optimiser and RNG state) in place; return the saved counters.

    ``path`` is a checkpoint directory or a root holding several (the newest is taken; see
    ``latest_checkpoint`` for ``allow_older``). Every file is checked against its sha256
    first; anything missing, damaged or malformed is a ``CheckpointError`` naming the file."""
    path = Path(path)
    if checkpoint_step(path) is None and not (path / "meta.json").exists():
        latest = latest_checkpoint(path, allow_older)
        if latest is None:
            raise CheckpointError(f"{path}: no checkpoint found")
        path = latest
    meta = read_meta(path)
    missing = [m for m in modules if f"{m}.safetensors" not in meta["files"]]
    if missing:
        raise CheckpointError(f"{path}: no weights for {missing}; it holds {meta['modules']}")
    state = load_state(path / STATE, verify=False)  # read_meta has just checked its sha256
    if (not isinstance(state, dict) or not isinstance(state.get("optimizers"), dict)
            or not isinstance(state.get("counters"), dict) or not isinstance(state.get("rng"), dict)):
        raise CheckpointError(f"{path / STATE}: needs \"optimizers\", \"counters\" and \"rng\" objects")
    absent = [name for name in (optimizers or {}) if name not in state["optimizers"]]
    if absent:
        raise CheckpointError(f"{path / STATE}: no optimiser state for {absent}; it holds {sorted(state['optimizers'])}")
    for mod_name, module in modules.items():
        try:
            load_model(module, str(path / f"{mod_name}.safetensors"))
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:  # a malformed file, a shape/name mismatch
            raise CheckpointError(f"{path / (mod_name + '.safetensors')}: cannot load into {mod_name} "
                                  f"({type(err).__name__}: {err})") from None
    for opt_name, opt in (optimizers or {}).items():
        try:
            opt.load_state_dict(state["optimizers"][opt_name])
        except Exception as err:  # noqa: BLE001 - state of the wrong shape fails anywhere inside the optimiser
            raise CheckpointError(f"{path / STATE}: optimiser state {opt_name!r} does not fit "
                                  f"({type(err).__name__}: {err})") from None
    if restore_rng:
        try:
            set_rng_state(state["rng"], dict(generators or {}))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path / STATE}: RNG state does not fit ({type(err).__name__}: {err})") from None
    return state["counters"]


def _prune(root: Path, keep: int, protect: Path) -> None:
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step_*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
