"""Behaviour cloning: the supervised loss of SFT, in one place.

    loss = head.bc_loss(trunk(tokens, state, instruction), action_chunk)

MSE for a deterministic head, cross-entropy over 256 bins for a token head, negative
log-likelihood for a tanh-Gaussian head.
"""

from __future__ import annotations

import torch

from vlarl.models.policy import VLAPolicy


def bc_loss(policy: VLAPolicy, tokens: torch.Tensor, state: torch.Tensor, lang: torch.Tensor,
            actions: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, C) image tokens, state (B, S), lang (B, 384), actions (B, k, A)."""
    assert actions.shape[1:] == (policy.cfg.chunk, policy.action_dim), actions.shape
    return policy.head.bc_loss(policy.features(tokens, state, lang), actions)
