"""Augmentation of uint8 image batches and of encoder token grids."""

from __future__ import annotations

import torch


def _shift_crop(x: torch.Tensor, pad: int, gen: torch.Generator | None) -> torch.Tensor:
    """(B, C, H, W) float: pad by replicating edges, crop back at a random offset per sample."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(b, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(b, c, h, w)
    return out.gather(3, cols)


def random_shift(images: torch.Tensor, pad: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """DrQ's augmentation: pad by replicating edges, crop back at a random offset per image."""
    return _shift_crop(images.permute(0, 3, 1, 2).float(), pad, gen).permute(0, 2, 3, 1).to(images.dtype)


def random_grid_shift(maps: torch.Tensor, pad: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """``random_shift`` on square grids of encoder channel maps (B, C, H*W): each grid padded by
    ``pad`` cells (edges replicated) and cropped back at its own random offset. For cached
    features of a frozen encoder, where the frames themselves are no longer at hand."""
    b, c, n = maps.shape
    side = round(n ** 0.5)
    if side * side != n:
        raise ValueError(f"random_grid_shift needs a square grid of cells, got {n}")
    return _shift_crop(maps.reshape(b, c, side, side).float(), pad, gen).reshape(b, c, n).to(maps.dtype)
