"""A run directory shared by every trainer and long command.

    runs/<name>/config.yaml      the resolved config (what ran)
    runs/<name>/tb/              TensorBoard scalars
    runs/<name>/metrics.jsonl    the same scalars as JSON lines (for plots and tests)
    runs/<name>/checkpoints/     atomic checkpoints (see checkpoint.py)
    runs/<name>/results.json     final figures

``Run.create`` starts a run (its directory readable by its owner only: RUN/secret holds the
actors' key), ``Run.resume`` reopens one: the config is read back, scalars logged after the
last checkpoint are dropped (they will be logged again), and ``restore`` loads weights,
optimisers, RNG and counters. A resume never starts over in silence: a damaged newest
checkpoint, or a run with history but no checkpoint left, is refused before anything in the
run is touched.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from typing_extensions import Self

from vlarl.errors import CheckpointError, VlarlError
from vlarl.fileio import atomic_write_text
from vlarl.runtime.checkpoint import (
    checkpoint_dirs,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_aside,
)
from vlarl.runtime.config import load_config, save_config
from vlarl.runtime.seeding import Generator

C = TypeVar("C")


WANDB_ENV = "VLARL_WANDB_PROJECT"  # set to a project name to log every run to Weights & Biases too


class Run:
    def __init__(self, path: Path, config: Any, resumed_step: int | None = None,
                 checkpoint: Path | None = None) -> None:
        self.path = path
        self.config = config
        self.resumed_step = resumed_step
        self._checkpoint = checkpoint  # the one resume chose and verified, until a newer one is saved
        self._tb = None
        self._metrics = open(path / "metrics.jsonl", "a")  # noqa: SIM115 -- open for the run's life
        self._wandb = _start_wandb(path, config) if os.environ.get(WANDB_ENV) else None

    @classmethod
    def create(cls, root: str | Path, name: str, config: Any, exist_ok: bool = False) -> Run:
        """A new run at ``root/name``; refuses to overwrite a run that has checkpoints."""
        path = Path(root) / name
        if (path / "checkpoints").exists() and not exist_ok:
            raise VlarlError(f"{path}: a run already exists here; use --resume {path} or another name")
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # config, secret (the actors' key), learner.json and actor files: the owner's only
        save_config(config, path / "config.yaml")
        return cls(path, config)

    @classmethod
    def start(cls, config: Any = None, resume: Run | None = None, exist_ok: bool = False) -> tuple[Run, Any]:
        """(run, config) for a trainer: ``resume`` if given, else a new run at
        ``config.run_dir``."""
        if resume is not None:
            return resume, resume.config
        if config is None:
            raise VlarlError("a config or a run to resume is needed")
        root = Path(config.run_dir)
        return cls.create(root.parent, root.name, config, exist_ok=exist_ok), config

    @classmethod
    def resume(cls, path: str | Path, config_cls: type[C], overrides: list[str] | tuple[str, ...] = (),
               config: C | None = None, allow_older: bool = False) -> Run:
        """Reopen a run; ``overrides`` (or a whole new ``config``, as a parent recipe that
        owns this run passes) may change settings such as the total step count.

        The newest checkpoint must be intact (every file's sha256): a damaged one is a
        ``CheckpointError`` naming it, what is wrong and the steps an older one would lose.
        ``allow_older`` (``--resume-from-older``) resumes from the newest intact one instead,
        says so on stderr and sets the damaged newer ones aside (``step_<N>.damaged``). A run
        whose checkpoints directory is left with no usable checkpoint but with history
        (results.json, damaged checkpoints) is refused too: resuming it would start over at
        step 0 and drop its metrics."""
        path = Path(path)
        if not (path / "config.yaml").exists():
            raise VlarlError(f"{path}: not a run directory (no config.yaml)")
        if config is None:
            config = load_config(config_cls, path / "config.yaml", overrides)
        main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes the run (and speaks)
        root = path / "checkpoints"
        ckpt = latest_checkpoint(root, allow_older, log=None if main else lambda _msg: None)  # None: stderr
        if ckpt is None:
            _refuse_without_checkpoint(path)
        step = checkpoint_step(ckpt) if ckpt else None
        if main:
            if ckpt is not None and step is not None:
                newer = [d for d in checkpoint_dirs(root) if (checkpoint_step(d) or 0) > step]
                for damaged in newer:  # only damaged ones can be newer than what latest_checkpoint chose
                    set_aside(damaged)
                if newer:
                    atomic_write_text(root / "latest", ckpt.name + "\n")
            if os.stat(path).st_mode & 0o077:  # a run of an older vlarl: readable by others
                os.chmod(path, 0o700)
            _truncate_metrics(path / "metrics.jsonl", step)
            save_config(config, path / "config.yaml")
        return cls(path, config, resumed_step=step, checkpoint=ckpt)

    def finished(self, total: int, marker: str | None = None) -> dict[str, Any] | None:
        """For a resumed run that already did its ``total`` steps (its newest checkpoint at
        ``total`` or past it, and results.json written, holding ``marker`` when given): say so,
        close the run and return its saved results. ``None`` when there is work left; a larger
        total (``steps=N``) makes a finished run continue."""
        results_path = self.path / "results.json"
        if self.resumed_step is None or self.resumed_step < total or not results_path.exists():
            return None
        try:
            results = json.loads(results_path.read_text())
        except (OSError, ValueError) as err:
            raise VlarlError(f"{results_path}: unreadable ({type(err).__name__}: {err})") from None
        if not isinstance(results, dict) or (marker is not None and marker not in results):
            return None  # saved along the way, not at the end: the run stopped before finishing
        if os.environ.get("RANK", "0") == "0":
            print(f"vlarl: {self.path} is finished (at step {self.resumed_step} of {total}); nothing to do. "
                    f"To train further, resume with a larger step count (steps=N); its results: {results_path}",
                  file=sys.stderr, flush=True)
        self.close()
        return results

    # --- logging ------------------------------------------------------------------------
    @property
    def tb(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"), purge_step=self.resumed_step)
        return self._tb

    def log(self, step: int, **scalars: float) -> None:
        """Scalars to TensorBoard and metrics.jsonl."""
        row = {"step": int(step), "time": time.time()}
        for key, value in scalars.items():
            value = float(value)
            self.tb.add_scalar(key, value, step)
            row[key] = value
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k not in ("step", "time")}, step=int(step))

    def write_results(self, results: Mapping[str, Any], name: str = "results.json") -> Path:
        path = self.path / name
        atomic_write_text(path, json.dumps(results, indent=2, default=_jsonable))
        return path

    # --- checkpoints --------------------------------------------------------------------
    def save(
        self,
        step: int,
        modules: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, Any] | None = None,
        counters: Mapping[str, Any] | None = None,
        generators: Mapping[str, Generator] | None = None,
    ) -> Path:
        if self._tb is not None:
            self._tb.flush()
        self._checkpoint = None  # the newest is now this one
        return save_checkpoint(self.path / "checkpoints", step, modules, optimizers, counters, generators)

    def restore(
        self,
        modules: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, Any] | None = None,
        generators: Mapping[str, Generator] | None = None,
    ) -> dict[str, Any] | None:
        """Load the newest checkpoint in place; ``None`` when there is none yet. After a resume
        that is the checkpoint it chose (damaged newer ones set aside when allowed to fall
        back), not looked up and hashed again; loading verifies it."""
        ckpt = self._checkpoint or latest_checkpoint(self.path / "checkpoints")
        if ckpt is None:
            return None
        return load_checkpoint(ckpt, modules, optimizers, generators)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        self._metrics.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _start_wandb(path: Path, config: Any) -> Any:
    """A Weights & Biases run beside TensorBoard, asked for by ``VLARL_WANDB_PROJECT``; its id is
    kept in the run directory so a resumed run continues the same W&B run."""
    try:
        import wandb
    except ImportError:
        raise VlarlError(f"{WANDB_ENV} is set but wandb is not installed: pip install wandb "
                         f"(or unset {WANDB_ENV})") from None
    from vlarl.runtime.config import to_dict

    id_file = path / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if run_id is None:
        run_id = wandb.util.generate_id()
        atomic_write_text(id_file, run_id)
    return wandb.init(project=os.environ[WANDB_ENV], name=path.name, id=run_id, resume="allow",
                      dir=str(path), config=to_dict(config) if hasattr(config, "__dataclass_fields__") else {})


def finish_stage(train: Callable[..., dict[str, Any]], config_cls: type, cfg: Any, progress: bool = True) -> dict[str, Any]:
    """A recipe's sub-run at ``cfg.run_dir``: its results when it finished, else resumed from
    its last checkpoint (with ``cfg``) or started, and run to the end. A results.json marked
    ``partial`` (the off-policy loop's, written at each checkpoint) is not a finished run."""
    path = Path(cfg.run_dir)
    if (path / "results.json").exists():
        results = json.loads((path / "results.json").read_text())
        if not results.get("partial"):  # a run's figures so far, written with its checkpoints
            return results
    resume = Run.resume(path, config_cls, config=cfg) if (path / "config.yaml").exists() else None
    return train(None if resume else cfg, resume=resume, progress=progress)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; anything else is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _refuse_without_checkpoint(path: Path) -> None:
    """A resume with no checkpoint to start from is a fresh start: fine for a run that crashed
    before its first save, or one that keeps no checkpoints of its own (a recipe whose stages
    are sub-runs), refused for one whose checkpoints are gone or damaged while its history
    (results.json, checkpoint directories) would be overwritten."""
    root = path / "checkpoints"
    if not root.is_dir():
        return
    history = [str(p.relative_to(path)) for p in (path / "results.json", root / "latest") if p.exists()]
    history += [str(p.relative_to(path)) for p in sorted(root.glob("step_*")) if p.is_dir()]
    if history:
        raise CheckpointError(
            f"{path}: no checkpoint to resume from, but the run has history ({', '.join(history[:6])}); "
            "resuming would start over at step 0, dropping its metrics.jsonl rows and overwriting results.json. "
            "Nothing was changed; restore its checkpoints, or start a new run with another name")


def _truncate_metrics(path: Path, step: int | None) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if step is not None and row["step"] <= step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
