"""Image augmentation on uint8 batches."""

from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """DrQ's augmentation: pad by replicating edges, crop back at a random offset per image."""
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(b, 3, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(b, 3, h, w)
    return out.gather(3, cols).permute(0, 2, 3, 1).to(images.dtype)
