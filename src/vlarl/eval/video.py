"""Videos from uint8 frames: mp4 through imageio-ffmpeg, GIF when ffmpeg is unavailable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 10.0) -> Path:
    """Write HWC uint8 frames; returns the path written (``.gif`` if mp4 was not possible)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images: list[Any] = [np.asarray(f, np.uint8) for f in frames]
    if path.suffix == ".mp4":
        try:
            # macro_block_size=1 keeps small frames (84 px) at their size instead of padding.
            with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=8) as w:
                for f in images:
                    w.append_data(f)  # type: ignore[attr-defined]  # the v2 writer's method, untyped
            return path
        except (ImportError, RuntimeError, OSError):
            path = path.with_suffix(".gif")
    imageio.mimsave(path, images, duration=1000.0 / fps, loop=0)
    return path
