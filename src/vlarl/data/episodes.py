"""An appendable, crash-safe, lazily read episode dataset.

Layout (close to LeRobotDataset's, so conversion either way is a file-by-file mapping)::

    DIR/meta/info.json          format, version, fps, features (dtype + shape per key)
    DIR/meta/episodes.jsonl     one JSON line per committed episode (the index)
    DIR/data/chunk-000/episode_000000.npz
                                one compressed file per episode, 1000 episodes per chunk

Each episode file holds ``observation.state`` and ``observation.images.<camera>`` with T+1
rows (the last observation is kept, so every transition has its next observation without a
copy), and ``action``, ``reward``, ``terminated``, ``truncated``, ``is_success`` with T rows.
Images are uint8 and zlib-compressed.

Crash safety: an episode is written to a temporary file, fsynced and renamed into place,
and only then appended (one line, fsynced) to the index. A writer killed at any moment
loses at most the episode in progress; a torn last index line is ignored by readers and
cut by the next writer. Readers open one episode file at a time.

A damaged episode file (missing, truncated, corrupt) is an error naming it when read;
``EpisodeDataset.readable(skip_bad=True)`` leaves such episodes out instead, naming each
and counting them (``skipped``). ``check_matches`` compares what a dataset records (the
env of every episode, observation and action shapes) with the env a run uses.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from typing_extensions import Self

from vlarl.errors import DatasetError
from vlarl.fileio import atomic_write_text, fsync_dir

FORMAT = "vlarl-episodes"
VERSION = 1
SOURCES = ("expert", "policy", "intervention", "human")
STEP_KEYS = ("action", "reward", "terminated", "truncated", "is_success")
CHUNK_SIZE = 1000


@dataclass
class EpisodeMeta:
    """One line of ``meta/episodes.jsonl``."""

    episode_index: int
    file: str
    length: int
    task: str
    instruction: str
    success: bool
    source: str
    bytes: int
    episode_return: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _read_index(index_path: Path) -> tuple[list[EpisodeMeta], list[str], int]:
    """Parse the index; return (episodes, problems, byte length of its complete lines).

    A last line without its newline is a write cut short: that episode never committed.
    """
    episodes: list[EpisodeMeta] = []
    problems: list[str] = []
    if not index_path.exists():
        return episodes, problems, 0
    *complete, tail = index_path.read_bytes().split(b"\n")
    end = 0
    for lineno, line in enumerate(complete, 1):
        end += len(line) + 1
        if not line.strip():
            continue
        try:
            episodes.append(EpisodeMeta(**json.loads(line)))
        except (ValueError, TypeError) as err:
            problems.append(f"{index_path}:{lineno}: unreadable index line skipped ({err})")
    if tail.strip():
        problems.append(f"{index_path}: ignored an incomplete last line ({len(tail)} bytes)")
    return episodes, problems, end


class EpisodeRecorder:
    """Builds one episode in memory, step by step, in the dataset's array layout."""

    def __init__(self, obs: Mapping[str, Any]) -> None:
        self._obs = [_flatten_obs(obs)]
        self._steps: dict[str, list] = {k: [] for k in STEP_KEYS}

    def add(
        self,
        action: np.ndarray,
        reward: float,
        next_obs: Mapping[str, Any],
        terminated: bool,
        truncated: bool,
        is_success: bool,
    ) -> None:
        for key, value in zip(STEP_KEYS, (action, reward, terminated, truncated, is_success)):
            self._steps[key].append(value)
        self._obs.append(_flatten_obs(next_obs))

    def __len__(self) -> int:
        return len(self._steps["action"])

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {k: np.stack([o[k] for o in self._obs]) for k in self._obs[0]}
        arrays["action"] = np.asarray(self._steps["action"], np.float32)
        arrays["reward"] = np.asarray(self._steps["reward"], np.float32)
        for key in ("terminated", "truncated", "is_success"):
            arrays[key] = np.asarray(self._steps[key], bool)
        return arrays


class EpisodeWriter:
    """Appends episodes to a dataset directory (created if missing).

    Either build an episode step by step (``start_episode`` / ``add_step`` /
    ``end_episode``) or hand over whole arrays with ``write_episode``. One writer per
    directory at a time (a lock file enforces it).
    """

    def __init__(self, root: str | Path, fps: float = 10.0, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = Path(root)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self._lock = open(self.root / "meta" / ".writer.lock", "w")  # noqa: SIM115 -- held for the writer's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise DatasetError(f"{self.root}: another writer has this dataset open") from None
        self.info_path = self.root / "meta" / "info.json"
        self.index_path = self.root / "meta" / "episodes.jsonl"
        if self.info_path.exists():
            self.info = _load_info(self.info_path)
        else:
            self.info = {"format": FORMAT, "version": VERSION, "fps": fps, "chunk_size": chunk_size, "features": {}}
            atomic_write_text(self.info_path, json.dumps(self.info, indent=2))
        episodes, problems, complete_bytes = _read_index(self.index_path)
        if self.index_path.exists() and self.index_path.stat().st_size > complete_bytes:
            with open(self.index_path, "r+b") as f:  # cut a torn tail so the next line starts clean
                f.truncate(complete_bytes)
        for p in problems:
            warnings.warn(p, stacklevel=2)
        for stale in self.root.glob("data/chunk-*/*.tmp"):
            stale.unlink()
        # Never reuse the number of a file already on disk, indexed or not: nothing is overwritten.
        on_disk = [int(p.stem.split("_")[1]) for p in self.root.glob("data/chunk-*/episode_*.npz")]
        self.next_index = max([e.episode_index + 1 for e in episodes] + [i + 1 for i in on_disk] + [0])
        self.num_episodes = len(episodes)
        self._recorder: EpisodeRecorder | None = None

    # --- step by step -------------------------------------------------------------------
    def start_episode(self, obs: Mapping[str, Any], task: str, instruction: str) -> None:
        self._recorder = EpisodeRecorder(obs)
        self._task, self._instruction = task, instruction

    def add_step(self, action, reward, next_obs, terminated, truncated, is_success) -> None:
        if self._recorder is None:
            raise RuntimeError("add_step before start_episode")
        self._recorder.add(action, reward, next_obs, terminated, truncated, is_success)

    def end_episode(self, source: str = "expert", success: bool | None = None, **extra: Any) -> EpisodeMeta:
        """Commit the episode in progress; ``success`` defaults to any step's ``is_success``."""
        if self._recorder is None:
            raise RuntimeError("end_episode before start_episode")
        arrays, self._recorder = self._recorder.arrays(), None
        return self.write_episode(arrays, self._task, self._instruction, source, success, **extra)

    def discard_episode(self) -> None:
        self._recorder = None

    # --- whole episodes -----------------------------------------------------------------
    def write_episode(
        self,
        arrays: Mapping[str, np.ndarray],
        task: str,
        instruction: str,
        source: str = "expert",
        success: bool | None = None,
        **extra: Any,
    ) -> EpisodeMeta:
        """Validate and commit one episode given as arrays (see the module docstring)."""
        if source not in SOURCES:
            raise DatasetError(f"{self.root}: unknown episode source {source!r}; valid: {', '.join(SOURCES)}")
        length = _check_episode(arrays, self.root)
        self._check_features(arrays)
        index = self.next_index
        rel = Path("data") / f"chunk-{index // self.info['chunk_size']:03d}" / f"episode_{index:06d}.npz"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **dict[str, Any](arrays))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if success is None:
            success = bool(np.any(arrays["is_success"]))
        meta = EpisodeMeta(
            episode_index=index,
            file=str(rel),
            length=length,
            task=task,
            instruction=instruction,
            success=bool(success),
            source=source,
            bytes=path.stat().st_size,
            episode_return=float(np.sum(arrays["reward"])),
            extra=dict(extra),
        )
        with open(self.index_path, "a") as f:
            f.write(json.dumps(dataclasses.asdict(meta)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.next_index += 1
        self.num_episodes += 1
        return meta

    def _check_features(self, arrays: Mapping[str, np.ndarray]) -> None:
        features = {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in arrays.items()}
        if not self.info["features"]:
            self.info["features"] = features
            atomic_write_text(self.info_path, json.dumps(self.info, indent=2))
        elif features != self.info["features"]:
            want, got = self.info["features"], features
            diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            details = "; ".join(f"{k}: dataset has {want.get(k)}, episode has {got.get(k)}" for k in diff)
            raise DatasetError(f"{self.root}: episode does not match the dataset's features ({details})")

    def close(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EpisodeDataset:
    """Reads a dataset lazily: metadata up front, episode arrays one file at a time."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise DatasetError(f"{self.root}: not a vlarl dataset (missing meta/info.json)")
        self.info = _load_info(info_path)
        self.episodes, self.problems, _ = _read_index(self.root / "meta" / "episodes.jsonl")
        for p in self.problems:
            warnings.warn(p, stacklevel=2)
        self.skipped: list[str] = []  # damaged episodes ``readable`` left out, one message each

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    @property
    def cameras(self) -> list[str]:
        prefix = "observation.images."
        return [k[len(prefix) :] for k in self.info["features"] if k.startswith(prefix)]

    def load(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of episode ``i`` (all keys, or only ``keys``)."""
        meta = self.episodes[i]
        path = self.root / meta.file
        if not path.exists():
            raise DatasetError(f"{path}: episode {meta.episode_index} file is missing")
        size = path.stat().st_size
        if size != meta.bytes:
            raise DatasetError(f"{path}: episode {meta.episode_index} is truncated or altered ({size} bytes on disk, {meta.bytes} committed)")
        try:
            with np.load(path) as npz:
                wanted = keys if keys is not None else list(npz.files)
                missing = [k for k in wanted if k not in npz.files]
                if missing:
                    raise DatasetError(f"{path}: no key(s) {missing}; has {npz.files}")
                return {k: npz[k] for k in wanted}
        except DatasetError:
            raise
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError) as err:
            raise DatasetError(f"{path}: episode {meta.episode_index} is corrupt ({err})") from err

    def __iter__(self) -> Iterator[tuple[EpisodeMeta, dict[str, np.ndarray]]]:
        for i, meta in enumerate(self.episodes):
            yield meta, self.load(i)

    def readable(self, skip_bad: bool = False, indices: Iterable[int] | None = None,
                 keys: list[str] | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(index, arrays) of episodes ``indices`` (default: all), in order. A damaged episode
        stops with a DatasetError naming it; with ``skip_bad`` it is left out instead: its
        message is printed (stderr) and kept in ``skipped``, and the count printed at the end."""
        before = len(self.skipped)
        for i in range(len(self)) if indices is None else indices:
            try:
                arrays = self.load(i, keys)
            except DatasetError as err:
                if not skip_bad:
                    raise DatasetError(f"{err} (skip_bad_episodes=true leaves damaged episodes out)") from err
                self.skipped.append(str(err))
                print(f"vlarl: skipped damaged episode: {err}", file=sys.stderr)
                continue
            yield i, arrays
        if len(self.skipped) > before:
            print(f"vlarl: {self.root}: skipped {len(self.skipped) - before} damaged episode(s)", file=sys.stderr)

    def recorded_envs(self) -> list[str | None]:
        """The env names the episodes record (``extra["env"]``, as ``vlarl collect`` writes it),
        sorted, ``None`` for episodes that record none."""
        names = {e.extra.get("env") or None for e in self.episodes}
        return sorted(names, key=lambda n: (n is None, n or ""))

    def check_matches(self, env_name: str, features: Mapping[str, Sequence[int]], what: str, override: str,
                      check_env: bool = True) -> None:
        """Raise DatasetError unless the dataset's observation and action shapes are ``features``
        (see ``env_features``) and, with ``check_env``, every episode records ``env_name``.
        ``what`` is the config key naming the dataset; ``override`` the setting that turns
        ``check_env`` off, for a deliberate transfer (shapes must match regardless)."""
        if not self.episodes:
            raise DatasetError(f"{what}: {self.root} holds no episodes")
        have = {k: list(v["shape"]) for k, v in self.info["features"].items()
                if k.startswith("observation.") or k == "action"}
        want = {k: list(v) for k, v in features.items()}
        if have != want:
            diff = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
            details = "; ".join(f"{k}: the dataset has {have.get(k, 'none')}, the run's env gives {want.get(k, 'none')}"
                                for k in diff)
            raise DatasetError(f"{what}: {self.root} does not fit the run's env {env_name} ({details})")
        recorded = self.recorded_envs()
        if check_env and recorded != [env_name]:
            shown = ", ".join(n or "(no env recorded)" for n in recorded)
            raise DatasetError(f"{what}: {self.root} was recorded on {shown}; this run uses {env_name}. "
                               f"Set {override} to use it anyway (deliberate transfer)")

    def verify(self) -> list[str]:
        """Read every episode; return one message per unreadable episode (empty if all good)."""
        bad = list(self.problems)
        for i in range(len(self)):
            try:
                self.load(i)
            except DatasetError as err:
                bad.append(str(err))
        return bad

    def summary(self) -> dict[str, Any]:
        """Counts, success rate and sources per task, from the metadata alone."""
        tasks: dict[str, dict[str, Any]] = {}
        for e in self.episodes:
            t = tasks.setdefault(e.task, {"episodes": 0, "frames": 0, "successes": 0, "sources": {}})
            t["episodes"] += 1
            t["frames"] += e.length
            t["successes"] += int(e.success)
            t["sources"][e.source] = t["sources"].get(e.source, 0) + 1
        for t in tasks.values():
            t["success_rate"] = t["successes"] / t["episodes"]
        disk = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return {
            "path": str(self.root),
            "episodes": len(self),
            "frames": self.num_frames,
            "success_rate": (sum(e.success for e in self.episodes) / len(self)) if len(self) else None,
            "features": self.info["features"],
            "fps": self.info["fps"],
            "disk_bytes": disk,
            "tasks": tasks,
            "problems": self.problems,
        }


def env_features(state_dim: int, action_dim: int, cameras: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
    """The observation and action shapes a dataset recorded on an env with these dimensions
    holds (``cameras``: camera -> (H, W, 3)), as ``EpisodeDataset.check_matches`` takes them."""
    out = {"observation.state": [state_dim], "action": [action_dim]}
    out.update({f"observation.images.{c}": list(shape) for c, shape in (cameras or {}).items()})
    return out


def _load_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise DatasetError(f"{path}: unreadable dataset info ({err})") from err
    if info.get("format") != FORMAT:
        raise DatasetError(f"{path}: format {info.get('format')!r}, expected {FORMAT!r}")
    if info.get("version", 0) > VERSION:
        raise DatasetError(f"{path}: version {info['version']} is newer than this vlarl reads ({VERSION})")
    return info


def _flatten_obs(obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{"state": ..., "pixels": {cam: ...}}`` -> LeRobot-style flat keys."""
    flat = {"observation.state": np.asarray(obs["state"], np.float32)}
    for cam, img in obs.get("pixels", {}).items():
        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise DatasetError(f"camera {cam!r}: images must be uint8, got {img.dtype}")
        flat[f"observation.images.{cam}"] = img
    for cam, tokens in obs.get("features", {}).items():  # a frozen encoder's tokens (EncodeFrames)
        flat[f"observation.features.{cam}"] = np.asarray(tokens)
    return flat


def _check_episode(arrays: Mapping[str, np.ndarray], where: Path) -> int:
    """Check keys and lengths; return the number of steps T."""
    missing = [k for k in ("observation.state", *STEP_KEYS) if k not in arrays]
    if missing:
        raise DatasetError(f"{where}: episode lacks key(s) {missing}")
    length = len(arrays["action"])
    if length < 1:
        raise DatasetError(f"{where}: an episode needs at least one step")
    for key, value in arrays.items():
        want = length + 1 if key.startswith("observation.") else length
        if len(value) != want:
            raise DatasetError(f"{where}: {key} has {len(value)} rows, expected {want} (T={length})")
    return length
