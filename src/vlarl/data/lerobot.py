"""LeRobotDataset interop: export vlarl episode datasets to the LeRobotDataset v2.1 layout and
import such datasets (ours or LeRobot's) back.

    OUT/meta/info.json              codebase_version v2.1, fps, features, path templates, totals
    OUT/meta/episodes.jsonl         {episode_index, tasks, length} (+ "vlarl": our episode metadata)
    OUT/meta/tasks.jsonl            {task_index, task}: the instructions
    OUT/meta/episodes_stats.jsonl   per-episode min / max / mean / std / count of every feature
    OUT/data/chunk-000/episode_000000.parquet
                                    one row per step: observation.state, observation.images.<cam>
                                    (PNG bytes, LeRobot's "image" dtype), action, next.reward,
                                    next.done, next.success, next.truncated, timestamp,
                                    frame_index, episode_index, index, task_index
    OUT/videos/chunk-000/observation.images.<cam>/episode_000000.mp4
                                    instead of PNG columns with ``video=True`` (lossy H.264)
    OUT/vlarl/final/episode_000000.npz
                                    the observation after the last step, which LeRobot's layout
                                    has no row for (kept so a round trip is lossless)

Importing a dataset without our final observations repeats the last one; without
``next.truncated`` every ``next.done`` counts as a termination.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from vlarl.data.episodes import EpisodeDataset, EpisodeWriter
from vlarl.errors import DatasetError

CODEBASE_VERSION = "v2.1"
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CHUNK_SIZE = 1000


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise DatasetError("LeRobot datasets are parquet files: pip install pyarrow") from err
    return pa, pq


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _stats(x: np.ndarray, image: bool) -> dict[str, Any]:
    """LeRobot's per-episode statistics: per dimension, or per channel in [0, 1] for images."""
    axes: tuple[int, ...]
    if image:
        x = x.astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # (T, C, H, W)
        axes, keep = (0, 2, 3), True
    else:
        x = x.astype(np.float64).reshape(len(x), -1)
        axes, keep = (0,), False
    out = {k: f(x, axis=axes, keepdims=keep) for k, f in (("min", np.min), ("max", np.max), ("mean", np.mean),
                                                          ("std", np.std))}
    if image:
        out = {k: v[0] for k, v in out.items()}
    return {**{k: v.tolist() for k, v in out.items()}, "count": [len(x)]}


def export_lerobot(src: str | Path, out: str | Path, video: bool = False, robot_type: str = "vlarl") -> dict[str, Any]:
    """Write dataset ``src`` as a LeRobotDataset at ``out`` (which must not hold files yet)."""
    pa, pq = _pyarrow()
    ds, out = EpisodeDataset(src), Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: not empty; export into a new folder")
    if len(ds) == 0:
        raise DatasetError(f"{src}: no episodes to export")
    fps = float(ds.info.get("fps", 10.0))
    state_key = "observation.state"
    cams = [f"observation.images.{c}" for c in ds.cameras]
    tasks: dict[str, int] = {}
    episodes, stats, features = [], [], None
    index = 0
    for n, (meta, arrays) in enumerate(ds):
        T = meta.length
        task_index = tasks.setdefault(meta.instruction, len(tasks))
        done = arrays["terminated"] | arrays["truncated"]
        columns: dict[str, Any] = {
            state_key: list(arrays[state_key][:T].astype(np.float32)),
            "action": list(arrays["action"].astype(np.float32)),
            "next.reward": arrays["reward"].astype(np.float32),
            "next.done": done.astype(bool),
            "next.success": arrays["is_success"].astype(bool),
            "next.truncated": arrays["truncated"].astype(bool),
            "timestamp": (np.arange(T) / fps).astype(np.float32),
            "frame_index": np.arange(T, dtype=np.int64),
            "episode_index": np.full(T, n, np.int64),
            "index": np.arange(index, index + T, dtype=np.int64),
            "task_index": np.full(T, task_index, np.int64),
        }
        chunk = n // CHUNK_SIZE
        for cam in cams:
            frames = arrays[cam][:T]
            if video:
                path = out / VIDEO_PATH.format(episode_chunk=chunk, video_key=cam, episode_index=n)
                path.parent.mkdir(parents=True, exist_ok=True)
                import imageio.v3 as iio

                iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1)
            else:
                columns[cam] = [{"bytes": _png(f), "path": None} for f in frames]
        if features is None:
            features = _features(arrays, cams, video, state_key)
        path = out / DATA_PATH.format(episode_chunk=chunk, episode_index=n)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({k: _arrow_column(pa, v, features[k]) for k, v in columns.items()})
        # LeRobot reads the frames with HF datasets, which types columns from this schema metadata alone
        # (without it an image column arrives as a plain dict and LeRobotDataset[i] fails).
        hf = json.dumps({"info": {"features": _hf_features(features)}})
        pq.write_table(table.replace_schema_metadata({"huggingface": hf}), path)
        final = out / "vlarl" / "final" / f"episode_{n:06d}.npz"
        final.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(final, **{k: arrays[k][T] for k in (state_key, *cams)})
        episodes.append({"episode_index": n, "tasks": [meta.instruction], "length": T,
                         "vlarl": {"task": meta.task, "source": meta.source, "success": meta.success,
                                   "extra": meta.extra}})
        ep_stats = {k: _stats(np.asarray(columns[k] if k != state_key else arrays[k][:T]), False)
                    for k in (state_key, "action", "next.reward", "timestamp", "frame_index")}
        ep_stats.update({cam: _stats(arrays[cam][:T], True) for cam in cams})
        stats.append({"episode_index": n, "stats": ep_stats})
        index += T
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(episodes),
        "total_frames": index, "total_tasks": len(tasks), "total_videos": len(cams) * len(episodes) if video else 0,
        "total_chunks": (len(episodes) - 1) // CHUNK_SIZE + 1, "chunks_size": CHUNK_SIZE, "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH if video else None,
        "features": features,
    }
    (out / "meta").mkdir(parents=True, exist_ok=True)
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    _write_jsonl(out / "meta" / "episodes.jsonl", episodes)
    _write_jsonl(out / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in tasks.items()])
    _write_jsonl(out / "meta" / "episodes_stats.jsonl", stats)
    return {"episodes": len(episodes), "frames": index, "out": str(out)}


def _features(arrays: dict[str, np.ndarray], cams: list[str], video: bool, state_key: str) -> dict[str, Any]:
    vec = lambda n, names=None: {"dtype": "float32", "shape": [n], "names": names}
    features = {state_key: vec(arrays[state_key].shape[-1]), "action": vec(arrays["action"].shape[-1])}
    for cam in cams:
        h, w, c = arrays[cam].shape[1:]
        features[cam] = {"dtype": "video" if video else "image", "shape": [h, w, c],
                         "names": ["height", "width", "channels"]}
    features.update({"next.reward": {"dtype": "float32", "shape": [1], "names": None},
                     **{k: {"dtype": "bool", "shape": [1], "names": None}
                        for k in ("next.done", "next.success", "next.truncated")},
                     "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                     **{k: {"dtype": "int64", "shape": [1], "names": None}
                        for k in ("frame_index", "episode_index", "index", "task_index")}})
    return features


def _column(table: dict[str, list], order: np.ndarray, key: str) -> list:
    return [table[key][i] for i in order]


def _step_column(table: dict[str, list], order: np.ndarray, key: str, dtype: type, default: np.ndarray) -> np.ndarray:
    """A per-step column as a flat (T,) array in frame order, or ``default`` when the dataset lacks it."""
    if key not in table:
        return default
    return np.asarray(_column(table, order, key), dtype).reshape(len(order))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _arrow_column(pa: Any, values: Any, feature: dict[str, Any]) -> Any:
    """A column typed as HF datasets (hence LeRobot) writes it: images as
    struct<bytes: binary, path: string>, vectors as fixed_size_list<dtype>[n]."""
    if feature["dtype"] == "image":
        return pa.array(values, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    if isinstance(values, list):  # (T,) list of (n,) vectors
        flat = pa.array(np.concatenate(values).astype(feature["dtype"]))
        return pa.FixedSizeListArray.from_arrays(flat, feature["shape"][0])
    return pa.array(values)


def _hf_features(features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The HF datasets ``Features`` of the parquet columns (videos live in mp4 files, not here)."""
    out: dict[str, Any] = {}
    for key, f in features.items():
        if f["dtype"] == "video":
            continue
        if f["dtype"] == "image":
            out[key] = {"_type": "Image"}
        elif list(f["shape"]) == [1]:
            out[key] = {"dtype": f["dtype"], "_type": "Value"}
        else:
            out[key] = {"feature": {"dtype": f["dtype"], "_type": "Value"}, "length": f["shape"][0],
                        "_type": "Sequence"}
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DatasetError(f"{path}: missing; not a LeRobotDataset v2 folder")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def import_lerobot(src: str | Path, out: str | Path, task: str | None = None, source: str = "human") -> dict[str, Any]:
    """Read the LeRobotDataset v2.x at ``src`` into a vlarl dataset at ``out``. ``task`` and
    ``source`` label episodes that carry no vlarl metadata."""
    _, pq = _pyarrow()
    src = Path(src)
    info_path = src / "meta" / "info.json"
    if not info_path.exists():
        raise DatasetError(f"{info_path}: missing; not a LeRobotDataset folder")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v2"):
        raise DatasetError(f"{info_path}: codebase_version {version!r}; this importer reads v2.x")
    features = info.get("features", {})
    if "action" not in features or "observation.state" not in features:
        raise DatasetError(f"{info_path}: features need 'action' and 'observation.state'; has {sorted(features)}")
    tasks = {t["task_index"]: t["task"] for t in _read_jsonl(src / "meta" / "tasks.jsonl")}
    cams = [k for k, f in features.items() if f.get("dtype") in ("image", "video")]
    chunk_size = int(info.get("chunks_size", CHUNK_SIZE))
    frames = 0
    with EpisodeWriter(out, fps=float(info.get("fps", 10.0))) as writer:
        for ep in _read_jsonl(src / "meta" / "episodes.jsonl"):
            n = int(ep["episode_index"])
            chunk = n // chunk_size
            path = src / info["data_path"].format(episode_chunk=chunk, episode_index=n)
            if not path.exists():
                raise DatasetError(f"{path}: missing (episode {n} of {src / 'meta' / 'episodes.jsonl'})")
            table = pq.read_table(path).to_pydict()
            order = np.argsort(table["frame_index"])
            col = functools.partial(_column, table, order)
            T = len(order)
            arrays: dict[str, np.ndarray] = {"observation.state": np.asarray(col("observation.state"), np.float32)}
            for cam in cams:
                if features[cam]["dtype"] == "image":
                    arrays[cam] = np.stack([_unpng(x["bytes"]) for x in col(cam)])
                else:
                    import imageio.v3 as iio

                    vid = src / info["video_path"].format(episode_chunk=chunk, video_key=cam, episode_index=n)
                    arrays[cam] = np.asarray(iio.imread(vid))[:T]
            step = functools.partial(_step_column, table, order)
            done = step("next.done", bool, np.eye(T, dtype=bool)[-1])  # absent: the episode ends at its last row
            truncated = step("next.truncated", bool, np.zeros(T, bool))
            final_path = src / "vlarl" / "final" / f"episode_{n:06d}.npz"
            if final_path.exists():
                with np.load(final_path) as z:
                    final = {k: z[k] for k in z.files}
            else:  # LeRobot keeps no observation after the last step: repeat the last one
                final = {k: v[-1] for k, v in arrays.items()}
            for k in list(arrays):
                arrays[k] = np.concatenate([arrays[k], final[k][None].astype(arrays[k].dtype)])
            arrays.update({
                "action": np.asarray(col("action"), np.float32),
                "reward": step("next.reward", np.float32, np.zeros(T, np.float32)),
                "terminated": done & ~truncated, "truncated": truncated,
                "is_success": step("next.success", bool, np.zeros(T, bool)),
            })
            ours = ep.get("vlarl", {})
            listed = (ep.get("tasks") or [""])[0]
            instruction = tasks.get(table["task_index"][0], listed) if "task_index" in table else listed
            writer.write_episode(arrays, ours.get("task", task or info.get("robot_type", "lerobot")), instruction,
                                 ours.get("source", source), ours.get("success"), **ours.get("extra", {}))
            frames += T
    return {"episodes": writer.num_episodes, "frames": frames, "out": str(out)}
