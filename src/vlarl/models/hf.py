"""A real vision-language model as the trunk, loaded from a local directory.

    trunk = HFVLMTrunk("/path/to/SmolVLM-256M-Instruct", state_dim=4, lora_rank=8)
    policy = HFPolicy(trunk, cameras=["corner"], action_dim=4, head="tokens")

Image embeddings (vision encoder + connector) of each camera, the instruction's token
embeddings and a projected proprio-state token are concatenated and run through the
language model; the last position's hidden state (it attends to everything before it) is
the trunk output. The VLM's weights are frozen (``backbone``); LoRA on the language
model's attention projections is the ``adapter``. Files are read with
``local_files_only=True``: nothing is fetched from a hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlarl.errors import CheckpointError
from vlarl.models.heads import ACTION_HEADS
from vlarl.models.lora import add_lora, is_lora_param


class HFVLMTrunk(nn.Module):
    def __init__(
        self,
        model_dir: str | Path,
        state_dim: int,
        lora_rank: int = 8,
        lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise CheckpointError(f"{model_dir}: no config.json; point at a downloaded transformers model directory")
        self.vlm = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.vlm.requires_grad_(False)
        text_cfg = getattr(self.vlm.config, "text_config", self.vlm.config)
        self.out_dim = text_cfg.hidden_size
        vision_cfg = getattr(self.vlm.config, "vision_config", None)
        self.image_size = getattr(vision_cfg, "image_size", 224)
        self.state_proj = nn.Linear(state_dim, self.out_dim)
        self.lora_rank = lora_rank
        if lora_rank > 0:
            language = self._language_model()
            add_lora(language, rank=lora_rank, targets=lora_targets)

    def _language_model(self) -> nn.Module:
        for name in ("text_model", "language_model"):
            if hasattr(self.vlm, name):
                return getattr(self.vlm, name)
        raise CheckpointError(f"{type(self.vlm).__name__}: no text_model or language_model to use as the trunk")

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, T, hidden) image tokens in the language model's space."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = ((x - 0.5) / 0.5).to(next(self.vlm.parameters()).dtype)  # SigLIP-style normalisation
        if hasattr(self.vlm, "vision_model") and hasattr(self.vlm, "connector"):  # Idefics3 / SmolVLM
            return self.vlm.connector(self.vlm.vision_model(pixel_values=x).last_hidden_state)
        out: Any = self.vlm.get_image_features(pixel_values=x)
        out = getattr(out, "pooler_output", out)
        if isinstance(out, (list, tuple)):
            out = torch.stack(list(out))
        return out.reshape(images.shape[0], -1, self.out_dim)

    def tokenize(self, instructions: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(instructions), return_tensors="pt", padding=True)
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def forward(self, pixels: list[torch.Tensor], state: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        device = state.device
        text = self.tokenize(instructions, device)
        words = self.vlm.get_input_embeddings()(text["input_ids"])
        images = [self.image_embeds(p) for p in pixels]
        state_token = self.state_proj(state)[:, None].to(words.dtype)
        embeds = torch.cat([*images, words, state_token], dim=1)
        b = embeds.shape[0]
        ones = lambda n: torch.ones(b, n, dtype=text["attention_mask"].dtype, device=device)
        mask = torch.cat([*(ones(i.shape[1]) for i in images), text["attention_mask"], ones(1)], dim=1)
        hidden = self._language_model()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return hidden[:, -1].float()


class HFPolicy(nn.Module):
    """An action head on an ``HFVLMTrunk``; same groups and heads as ``VLAPolicy``."""

    def __init__(self, trunk: HFVLMTrunk, cameras: list[str], action_dim: int, head: str = "deterministic",
                 chunk: int = 1) -> None:
        super().__init__()
        self.trunk, self.cameras, self.action_dim = trunk, list(cameras), action_dim
        self.head = ACTION_HEADS[head](trunk.out_dim, action_dim, chunk)

    def param_group(self, name: str) -> str:
        if name.startswith("head."):
            return "head"
        if is_lora_param(name) or name.startswith("trunk.state_proj."):
            return "adapter"
        return "backbone"

    def features(self, pixels: dict[str, torch.Tensor], state: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        return self.trunk([pixels[c] for c in self.cameras], state, instructions)

    def forward(self, pixels, state, instructions, deterministic: bool = True) -> torch.Tensor:
        return self.head(self.features(pixels, state, instructions), deterministic=deterministic)

    def bc_loss(self, pixels, state, instructions, actions) -> torch.Tensor:
        return self.head.bc_loss(self.features(pixels, state, instructions), actions)
