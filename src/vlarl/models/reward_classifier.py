"""A binary success classifier on camera images: frozen pretrained encoder + small head.

HIL-SERL replaces hand-written success checks with such a classifier trained on a few
hundred labelled frames. The encoder is frozen (its features can be cached for training);
a 1x1 convolution keeps where things are at low cost, then an MLP gives one logit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from vlarl.models.encoders import make_encoder


class RewardClassifier(nn.Module):
    def __init__(self, cameras: Sequence[str], image_size: int, encoder: str = "efficientnet-lite0",
                 channels: int = 16, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.cameras, self.image_size = list(cameras), int(image_size)
        self.encoder = make_encoder(encoder, frozen=True)
        with torch.no_grad():
            n_tokens = self.encoder(torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8)).shape[1]
        self.reduce = nn.Linear(self.encoder.out_channels, channels)  # a 1x1 conv over the token grid
        self.head = nn.Sequential(
            nn.Linear(channels * n_tokens * len(self.cameras), hidden), nn.LayerNorm(hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, 1),
        )

    @torch.no_grad()
    def tokens(self, pixels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Frozen encoder tokens (B, cameras, N, C): computed once per frame when training."""
        return torch.stack([self.encoder(pixels[c]) for c in self.cameras], dim=1)

    def logits_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.reduce(tokens).flatten(1)).squeeze(-1)

    def forward(self, pixels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Success logits (B,) for uint8 (B, H, W, 3) images per camera."""
        return self.logits_from_tokens(self.tokens(pixels))

    @torch.no_grad()
    def success_prob(self, images: Mapping[str, np.ndarray]) -> float:
        """P(success) for one frame given as {camera: uint8 HWC}."""
        was_training = self.training
        self.eval()
        pixels = {c: torch.as_tensor(np.ascontiguousarray(images[c]))[None] for c in self.cameras}
        prob = torch.sigmoid(self(pixels))[0].item()
        self.train(was_training)
        return prob
