"""Fusion trunk: image tokens, the instruction and proprio state in; one feature vector out.

As in iRe-VLA, many visual tokens are compressed by a TokenLearner to a few, then a small
transformer mixes them with a language token and a state token; the output is the [CLS]
token. Attention and MLPs are plain ``nn.Linear`` layers so LoRA (peft) can wrap them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenLearner(nn.Module):
    """Learns ``num_tokens`` spatial attention maps and pools the input tokens with them."""

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_tokens))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, S, D)
        weights = self.attn(self.norm(tokens)).softmax(dim=1)  # normalised over the N inputs
        return weights.transpose(1, 2) @ tokens


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class FusionTrunk(nn.Module):
    def __init__(
        self,
        token_dim: int,
        tokens_per_camera: int,
        num_cameras: int,
        state_dim: int,
        lang_dim: int,
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        learned_tokens: int = 8,
    ) -> None:
        super().__init__()
        self.img_proj = nn.Linear(token_dim, dim)
        self.pos = nn.Parameter(torch.randn(num_cameras * tokens_per_camera, dim) * 0.02)
        self.token_learner = TokenLearner(dim, learned_tokens)
        self.lang_proj = nn.Linear(lang_dim, dim)
        self.state_proj = nn.Linear(state_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, image_tokens: torch.Tensor, state: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        """image_tokens (B, cameras*N, C), state (B, S), lang (B, L) -> (B, dim)."""
        b = image_tokens.shape[0]
        img = self.token_learner(self.img_proj(image_tokens) + self.pos)
        x = torch.cat(
            [self.cls.expand(b, -1, -1), self.lang_proj(lang)[:, None], self.state_proj(state)[:, None], img], dim=1
        )
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])
