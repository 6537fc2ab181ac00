"""The vision-language-action policy: encoder -> fusion trunk -> action head.

    backbone  the vision encoder (and the trunk's base weights once LoRA wraps it)
    adapter   the fusion trunk, or only its LoRA matrices when ``lora_rank > 0``
    head      the action head and any critic or value heads

The instruction encoder (MiniLM) is not part of the module: instructions are embedded
once, outside, and passed in as vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vlarl.errors import VlarlError, unknown
from vlarl.models.encoders import make_encoder
from vlarl.models.heads import ACTION_HEADS
from vlarl.models.language import EMBED_DIM
from vlarl.models.lora import add_lora, is_lora_param
from vlarl.models.trunk import FusionTrunk
from vlarl.ranges import ranged

ENCODERS = ("efficientnet-lite0", "conv")  # what models.encoders.make_encoder builds


@dataclass
class PolicyConfig:
    encoder: str = ranged("efficientnet-lite0", choices=ENCODERS)  # or "conv" (trainable, from scratch)
    freeze_encoder: bool = True
    dim: int = ranged(128, ge=1)
    layers: int = ranged(2, ge=1)
    heads: int = ranged(4, ge=1)
    learned_tokens: int = ranged(8, ge=1)
    head: str = ranged("deterministic", choices=tuple(ACTION_HEADS))  # "gaussian", "tokens"
    chunk: int = ranged(1, ge=1)
    bins: int = ranged(256, ge=2)
    lora_rank: int = ranged(0, ge=0)


class VLAPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig, cameras: list[str], image_size: int, state_dim: int, action_dim: int):
        super().__init__()
        if cfg.head not in ACTION_HEADS:
            raise VlarlError(unknown("head", cfg.head, ACTION_HEADS))
        self.cfg, self.cameras = cfg, list(cameras)
        self.image_size, self.state_dim, self.action_dim = image_size, state_dim, action_dim
        self.encoder = make_encoder(cfg.encoder, frozen=cfg.freeze_encoder)
        with torch.no_grad():
            tokens = self.encoder(torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8)).shape[1]
        self.trunk = FusionTrunk(self.encoder.out_channels, tokens, len(cameras), state_dim, EMBED_DIM,
                                 cfg.dim, cfg.layers, cfg.heads, cfg.learned_tokens)
        if cfg.lora_rank > 0:
            add_lora(self.trunk, rank=cfg.lora_rank)
        kwargs: dict[str, Any] = {"bins": cfg.bins} if cfg.head == "tokens" else {}
        self.head = ACTION_HEADS[cfg.head](cfg.dim, action_dim, cfg.chunk, **kwargs)

    # --- groups -------------------------------------------------------------------------
    def param_group(self, name: str) -> str:
        if name.startswith("encoder."):
            return "backbone"
        if name.startswith("trunk."):
            if self.cfg.lora_rank > 0 and not is_lora_param(name):
                return "backbone"
            return "adapter"
        return "head"

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    # --- forward ------------------------------------------------------------------------
    def encode_images(self, pixels: dict[str, torch.Tensor]) -> torch.Tensor:
        """{camera: (B, H, W, 3) uint8} -> (B, cameras * N, C) tokens (cacheable if frozen)."""
        missing = [c for c in self.cameras if c not in pixels]
        if missing:
            raise VlarlError(f"policy expects cameras {self.cameras}; missing {missing} (got {sorted(pixels)})")
        return torch.cat([self.encoder(pixels[c]) for c in self.cameras], dim=1)

    def features(self, tokens: torch.Tensor, state: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        return self.trunk(tokens.float(), state, lang)

    def forward(self, pixels: dict[str, torch.Tensor], state: torch.Tensor, lang: torch.Tensor,
                deterministic: bool = True) -> torch.Tensor:
        """Action chunk (B, k, A) in [-1, 1]."""
        return self.head(self.features(self.encode_images(pixels), state, lang), deterministic=deterministic)

    @torch.no_grad()
    def act(self, obs: dict[str, Any], lang: torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """Batched numpy observations -> the first action of each chunk, (B, A) float32."""
        device = next(self.parameters()).device
        pixels = {c: torch.as_tensor(np.asarray(obs["pixels"][c]), device=device) for c in self.cameras}
        state = torch.as_tensor(np.asarray(obs["state"], np.float32), device=device)
        if state.shape[-1] != self.state_dim:
            raise VlarlError(f"policy expects state of size {self.state_dim}, got {tuple(state.shape)}")
        chunk = self(pixels, state, lang.to(device), deterministic=deterministic)
        return chunk[:, 0].float().cpu().numpy()

    def log_prob(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.head, "log_prob"):
            raise VlarlError(f"head {self.cfg.head!r} has no log-probabilities; use 'gaussian' or 'tokens'")
        return self.head.log_prob(features, actions)

