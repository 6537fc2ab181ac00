"""Replay buffers for off-policy learners (SAC/RLPD, HIL-SERL).

Frames are stored once, in the order they arrive: slot i holds observation o_i and, if a
transition starts there, (a_i, r_i, terminated_i); its next observation is slot i + 1. An
episode of T steps takes T + 1 slots, the last holding only the final observation. Images
stay uint8, so a pixel transition costs about one image (a float32 buffer with next-obs
copies costs eight).

Wrap-around needs no bookkeeping: writing slot k clears the transition that started at k,
and the transition at k - 1 is always the one just written. Sampling draws slots uniformly
and keeps the valid ones. ``memmap_dir`` puts the arrays in memory-mapped files, for
buffers larger than RAM.

Checkpoints (``state_dict``) hold only the filled slots: a 200k-slot buffer 3k frames into a run
saves 3k frames, not 200k. A memory-mapped buffer's frames are not copied at all: its files
are the snapshot. They count every frame written to them (``writes.npy``), so a resume from an
older checkpoint knows which slots were written after it and leaves those out, and a
checkpoint whose frames the files no longer hold is refused with the reason.

With ``mc_gamma`` set, each transition also gets the discounted Monte-Carlo return of the
rest of its episode, G_t = r_t + gamma G_{t+1} (0 after the last step), written when the
episode ends (Cal-QL floors its conservative penalty with it). Until then it is 0.

``features`` (camera -> token shape) stores a frozen encoder's tokens of each frame in
float16 (``FEATURE_DTYPE``) beside or instead of its image, so a learner never encodes a frame
again: two 128 px cameras of EfficientNet-Lite0 stride-16 tokens (112 channels x 64 cells) take 28 KB a
frame against 96 KB of uint8 images.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlarl.errors import VlarlError

FEATURE_DTYPE = np.float16  # cached encoder tokens: half the bytes of float32, ample for a frozen net's output

if TYPE_CHECKING:
    from vlarl.data.episodes import EpisodeDataset


class ReplayBuffer:
    def __init__(
        self,
        capacity: int,
        state_dim: int,
        action_dim: int,
        cameras: Mapping[str, tuple[int, ...]] | None = None,
        memmap_dir: str | Path | None = None,
        seed: int = 0,
        mc_gamma: float | None = None,
        features: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        if capacity < 2:
            raise VlarlError(f"replay capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self.cameras = dict(cameras or {})
        self.feature_shapes = dict(features or {})
        self._memmap_dir = Path(memmap_dir) if memmap_dir is not None else None
        if self._memmap_dir is not None:
            self._memmap_dir.mkdir(parents=True, exist_ok=True)
        self.state = self._array("state", (capacity, state_dim), np.float32)
        self.pixels = {c: self._array(f"pixels_{c}", (capacity, *shape), np.uint8) for c, shape in self.cameras.items()}
        self.features = {c: self._array(f"features_{c}", (capacity, *shape), FEATURE_DTYPE)
                         for c, shape in self.feature_shapes.items()}
        self.action = self._array("action", (capacity, action_dim), np.float32)
        self.reward = self._array("reward", (capacity,), np.float32)
        self.terminated = self._array("terminated", (capacity,), bool)
        self.valid = self._array("valid", (capacity,), bool)  # a transition starts at this slot
        self.valid[:] = False
        # frames ever written into the memmap files (survives this process: see load_state_dict)
        self._writes = self._array("writes", (1,), np.int64, keep=True) if self._memmap_dir is not None else None
        self.mc_gamma = mc_gamma
        self.mc_return = self._array("mc_return", (capacity,), np.float32) if mc_gamma is not None else None
        self._episode_start = 0  # slot of the open episode's first frame
        self.ptr = 0  # the slot the next frame goes to
        self.frames = 0  # frames written so far, all time
        self._open = False  # an episode is in progress (its last frame is at ptr - 1)
        self.rng = np.random.default_rng(seed)

    def _array(self, name: str, shape: tuple[int, ...], dtype, keep: bool = False) -> np.ndarray:
        if self._memmap_dir is None:
            return np.zeros(shape, dtype)
        path = self._memmap_dir / f"{name}.npy"
        if path.exists():  # an earlier buffer's file: reused in place (a resume finds its frames there)
            arr = np.load(path, mmap_mode="r+")
            if arr.shape == shape and arr.dtype == np.dtype(dtype):
                return arr
            if keep:
                raise VlarlError(f"{path}: holds {arr.dtype}{list(arr.shape)}, expected {np.dtype(dtype)}{list(shape)}")
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        return arr

    # --- writing ------------------------------------------------------------------------
    def _write_frame(self, obs: Mapping[str, Any]) -> None:
        k = self.ptr
        self.state[k] = obs["state"]
        for c in self.cameras:
            self.pixels[c][k] = obs["pixels"][c]
        for c in self.feature_shapes:
            self.features[c][k] = obs["features"][c]
        self.valid[k] = False  # its old transition, if any, lost its data
        self.ptr = (k + 1) % self.capacity
        self.frames += 1
        if self._writes is not None:
            self._writes[0] += 1

    def start_episode(self, obs: Mapping[str, Any]) -> None:
        """The first observation of an episode."""
        self._episode_start = self.ptr
        self._write_frame(obs)
        self._open = True

    def add(self, action: np.ndarray, reward: float, next_obs: Mapping[str, Any], terminated: bool,
            truncated: bool = False) -> None:
        """One step: the action taken in the last observation, its reward and the next
        observation. After ``terminated`` or ``truncated`` call ``start_episode`` again."""
        if not self._open:
            raise VlarlError("ReplayBuffer.add before start_episode")
        k = (self.ptr - 1) % self.capacity
        self.action[k], self.reward[k], self.terminated[k] = action, reward, terminated
        self._write_frame(next_obs)
        self.valid[k] = True
        if self.mc_return is not None:
            self.mc_return[k] = 0.0
        if terminated or truncated:
            self._open = False
            if self.mc_return is not None:
                self._write_mc_returns(k)

    def _write_mc_returns(self, last: int) -> None:
        """Discounted returns of the episode that just ended at slot ``last``, backwards."""
        assert self.mc_return is not None and self.mc_gamma is not None
        g, k = 0.0, last
        steps = (last - self._episode_start) % self.capacity + 1
        for _ in range(min(steps, self.capacity - 1)):  # an episode longer than the buffer keeps its tail
            g = float(self.reward[k]) + self.mc_gamma * g
            self.mc_return[k] = g
            k = (k - 1) % self.capacity

    def add_episode(self, arrays: Mapping[str, np.ndarray]) -> None:
        """A whole episode in the dataset layout (T + 1 observations, T steps)."""
        t = len(arrays["action"])

        def obs(i: int) -> dict[str, Any]:
            return {"state": arrays["observation.state"][i],
                    "pixels": {c: arrays[f"observation.images.{c}"][i] for c in self.cameras},
                    "features": {c: arrays[f"observation.features.{c}"][i] for c in self.feature_shapes}}

        self.start_episode(obs(0))
        for i in range(t):
            self.add(arrays["action"][i], float(arrays["reward"][i]), obs(i + 1), bool(arrays["terminated"][i]),
                     truncated=i == t - 1)

    @classmethod
    def from_dataset(cls, path: str | Path | EpisodeDataset, capacity: int | None = None, seed: int = 0,
                     reward_fn=None, skip_bad: bool = False, frame_encoder: Any = None,
                     keep_frames: bool = True) -> ReplayBuffer:
        """An offline buffer holding every episode of a ``vlarl.data`` dataset (a path or an
        open ``EpisodeDataset``). A damaged episode is an error, or with ``skip_bad`` left out
        (listed in the dataset's ``skipped``). With ``frame_encoder`` (a
        ``vlarl.models.encoders.FrameEncoder``) each frame is encoded once as it loads and its
        tokens stored, the frames too unless ``keep_frames`` is false."""
        from vlarl.data.episodes import EpisodeDataset

        data = path if isinstance(path, EpisodeDataset) else EpisodeDataset(path)
        feats = data.info["features"]
        cameras = {c: tuple(feats[f"observation.images.{c}"]["shape"]) for c in data.cameras}
        need = sum(e.length + 1 for e in data.episodes)
        tokens = frame_encoder.shapes if frame_encoder is not None else None
        buf = cls(capacity or need, feats["observation.state"]["shape"][0], feats["action"]["shape"][0],
                  cameras if keep_frames or frame_encoder is None else None, seed=seed, features=tokens)
        for _, arrays in data.readable(skip_bad):
            if reward_fn is not None:
                arrays = {**arrays, "reward": reward_fn(arrays)}
            if frame_encoder is not None:
                encoded = frame_encoder.encode({c: arrays[f"observation.images.{c}"] for c in frame_encoder.shapes})
                arrays = {**arrays, **{f"observation.features.{c}": v for c, v in encoded.items()}}
            buf.add_episode(arrays)
        return buf

    # --- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of transitions that can be sampled."""
        return int(self.valid.sum())

    def sample_indices(self, n: int) -> np.ndarray:
        """``n`` slots drawn uniformly (with replacement) among valid transitions."""
        size = min(self.frames, self.capacity)
        if not self.valid[:size].any():
            raise VlarlError("cannot sample from an empty replay buffer")
        out = np.empty(0, np.int64)
        while len(out) < n:  # almost every slot is valid: rejection is cheap
            draw = self.rng.integers(0, size, 2 * (n - len(out)) + 8)
            out = np.concatenate([out, draw[self.valid[draw]]])
        return out[:n]

    def gather(self, idx: np.ndarray) -> dict[str, Any]:
        """Transitions at slots ``idx`` (any shape); next observations come from idx + 1."""
        nxt = (idx + 1) % self.capacity
        return {
            "state": self.state[idx], "next_state": self.state[nxt],
            "pixels": {c: v[idx] for c, v in self.pixels.items()},
            "next_pixels": {c: v[nxt] for c, v in self.pixels.items()},
            "features": {c: v[idx] for c, v in self.features.items()},
            "next_features": {c: v[nxt] for c, v in self.features.items()},
            "action": self.action[idx], "reward": self.reward[idx], "terminated": self.terminated[idx],
            **({"mc_return": self.mc_return[idx]} if self.mc_return is not None else {}),
        }

    def sample(self, batch_size: int, n_batches: int = 1) -> dict[str, Any]:
        """``n_batches`` minibatches in one call: arrays shaped (n_batches, batch_size, ...)."""
        return self.gather(self.sample_indices(batch_size * n_batches).reshape(n_batches, batch_size))

    @property
    def bytes_per_frame(self) -> int:
        """Bytes one slot (an observation and the step taken from it) occupies."""
        return self.nbytes // self.capacity

    @property
    def nbytes(self) -> int:
        arrays = [self.state, self.action, self.reward, self.terminated, self.valid, *self.pixels.values(),
                  *self.features.values(),
                  *([self.mc_return] if self.mc_return is not None else [])]
        return sum(a.nbytes for a in arrays)

    # --- persistence (checkpoints "where asked") -----------------------------------------
    def _slot_arrays(self) -> dict[str, np.ndarray]:
        out = {"state": self.state, "action": self.action, "reward": self.reward, "terminated": self.terminated,
               **{f"pixels.{c}": v for c, v in self.pixels.items()},
               **{f"features.{c}": v for c, v in self.features.items()}}
        if self.mc_return is not None:
            out["mc_return"] = self.mc_return
        return out

    def state_dict(self) -> dict[str, Any]:
        """Counters, the valid mask and the filled slots' arrays; a memory-mapped buffer's
        arrays stay in its files (flushed here) and only their write count is recorded."""
        filled = min(self.frames, self.capacity)
        d: dict[str, Any] = {"capacity": self.capacity, "filled": filled, "valid": self.valid[:filled].copy(),
                             "ptr": self.ptr, "frames": self.frames, "open": self._open,
                             "rng": self.rng.bit_generator.state, "episode_start": self._episode_start}
        if self._writes is None:
            d["slots"] = {k: v[:filled] for k, v in self._slot_arrays().items()}
        else:
            for arr in (*self._slot_arrays().values(), self.valid, self._writes):
                arr.flush()  # type: ignore[attr-defined]
            d["memmap"] = {"dir": str(self._memmap_dir), "writes": int(self._writes[0])}
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        if "capacity" not in d:  # a checkpoint from before filled-slot saving: every slot
            d = {**d, "capacity": len(d["valid"]), "filled": len(d["valid"]),
                 "slots": {"state": d["state"], "action": d["action"], "reward": d["reward"],
                           "terminated": d["terminated"], **{f"pixels.{c}": v for c, v in d["pixels"].items()},
                           **{f"features.{c}": v for c, v in d.get("features", {}).items()},
                           **({"mc_return": d["mc_return"]} if d.get("mc_return") is not None else {})},
                 "episode_start": d.get("episode_start", 0)}
        if d["capacity"] != self.capacity:
            raise VlarlError(f"replay checkpoint of {d['capacity']} slots does not fit a buffer of {self.capacity}")
        filled = d["filled"]
        if "slots" in d:
            arrays = self._slot_arrays()
            if set(d["slots"]) != set(arrays):
                raise VlarlError(f"replay checkpoint holds {sorted(d['slots'])}, this buffer {sorted(arrays)}")
            for key, arr in arrays.items():
                arr[:filled] = d["slots"][key]
            self.valid[:] = False
            self.valid[:filled] = d["valid"]
        else:
            self._load_memmap(d)
        self._episode_start = d["episode_start"]
        self.ptr, self.frames, self._open = d["ptr"], d["frames"], d["open"]
        self.rng.bit_generator.state = d["rng"]

    def _load_memmap(self, d: Mapping[str, Any]) -> None:
        """The checkpoint's frames from this buffer's files, less those written after it."""
        saved = d["memmap"]
        if self._writes is None or Path(saved["dir"]).resolve() != self._memmap_dir.resolve():  # type: ignore[union-attr]
            raise VlarlError(f"replay checkpoint keeps its frames in {saved['dir']}; open the buffer with "
                             "memmap_dir set to that directory")
        since = int(self._writes[0]) - saved["writes"]
        if since < 0:
            raise VlarlError(f"{self._memmap_dir}: its files hold {int(self._writes[0])} frames, fewer than the "
                             f"{saved['writes']} of the checkpoint (another buffer's files?)")
        self.valid[:] = False
        self.valid[:d["filled"]] = d["valid"]
        if since >= self.capacity - 1:
            raise VlarlError(f"{self._memmap_dir}: {since} frames were written after this checkpoint, more than the "
                             f"buffer holds ({self.capacity}); none of its frames are left to resume with")
        if since:  # slots overwritten after the checkpoint, and the transition ending in the first of them
            for k in range(d["ptr"] - 1, d["ptr"] + since):
                self.valid[k % self.capacity] = False
            print(f"replay {self._memmap_dir}: {since} frames written after this checkpoint are left out", flush=True)


def sample_mixed(online: ReplayBuffer, offline: ReplayBuffer | None, batch_size: int, n_batches: int,
                 offline_ratio: float) -> dict[str, Any]:
    """RLPD's symmetric sampling: exactly round(batch_size * offline_ratio) offline transitions
    in every minibatch, the rest online; all minibatches drawn in one call each. Online rows
    come first; ``offline`` (n_batches, batch_size) marks the offline ones."""
    n_off = round(batch_size * offline_ratio) if offline is not None else 0
    n_on = batch_size - n_off
    parts = []
    if n_on:
        parts.append({**online.sample(n_on, n_batches), "offline": np.zeros((n_batches, n_on), bool)})
    if n_off:
        parts.append({**offline.sample(n_off, n_batches), "offline": np.ones((n_batches, n_off), bool)})  # type: ignore[union-attr]
    if len(parts) == 1:
        return parts[0]
    return _concat(parts[0], parts[1])


def _concat(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in a.items():
        out[k] = {c: np.concatenate([v[c], b[k][c]], axis=1) for c in v} if isinstance(v, dict) else \
            np.concatenate([v, b[k]], axis=1)
    return out
