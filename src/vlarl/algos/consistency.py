"""A consistency-policy action head: one-step diffusion, as ConRFT's actor.

A consistency model maps a noised action x_t at any noise level t straight to the clean
action, f(x_t, t | s) = a, in one network call (Song et al. 2023; Karras et al. 2022 for the
parametrisation):

    f(x, t | s) = c_skip(t) x + c_out(t) F(c_in(t) x, t, s)
    c_skip(t) = sigma_data^2 / ((t - eps)^2 + sigma_data^2)
    c_out(t)  = (t - eps) sigma_data / sqrt(sigma_data^2 + t^2)
    c_in(t)   = 1 / sqrt(sigma_data^2 + t^2)

so f(x, eps) = x exactly (c_skip(eps) = 1, c_out(eps) = 0): the boundary condition holds by
construction, whatever F is. Noise levels follow the Karras schedule

    t_i = (K^(1/rho) + i / (M - 1) (eps^(1/rho) - K^(1/rho)))^rho,   i = 0 .. M - 1

(t_0 = K the largest, t_{M-1} = eps). Acting draws x_K = K z, z ~ N(0, I), and returns
f(x_K, K | s): one call, stochastic through z (zero noise gives the policy's "mode").

Behaviour cloning (ConRFT's consistency loss on demonstrations): noise a demo action to a
random level t_i of the schedule, i ~ U{0 .. M - 2}, and regress f back to it,

    L_BC = E[ w(t) || f(a + t z, t | s) - a ||^2 ],   w(t) = 1/t^2 + 1/sigma_data^2

(Karras weighting: the SNR plus 1/sigma_data^2), plus ``sample_mse_weight`` times the squared
error of the one-step action itself, as ConRFT's released code adds. The actor loss that
combines it with the critic is in ``vlarl.algos.conrft``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlarl.models.heads import mlp
from vlarl.ranges import ranged


@dataclass
class ConsistencyConfig:
    sigma_data: float = ranged(0.5, gt=0)
    sigma_min: float = ranged(0.002, gt=0)  # eps: the boundary, f(x, eps) = x
    sigma_max: float = ranged(80.0, gt=0)  # K: the noise level a sample starts from
    rho: float = ranged(7.0, gt=0)
    scales: int = ranged(40, ge=2)  # M: discretisation steps of the schedule
    time_dim: int = ranged(16, ge=2)  # sinusoidal features of the noise level (sin and cos: even)
    hidden: int = ranged(256, ge=1)
    layers: int = ranged(2, ge=1)
    clip: bool = True  # clamp actions to [-1, 1]
    sample_mse_weight: float = ranged(1.0, ge=0)  # weight of the one-step action's squared error in the BC loss


def karras_sigmas(cfg: ConsistencyConfig) -> torch.Tensor:
    """The M noise levels t_0 = K > ... > t_{M-1} = eps."""
    i = torch.arange(cfg.scales, dtype=torch.float64)
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    return ((hi + i / (cfg.scales - 1) * (lo - hi)) ** cfg.rho).float()


def scalings(t: torch.Tensor, cfg: ConsistencyConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """c_skip(t), c_out(t), c_in(t) with the boundary at eps = ``sigma_min``."""
    sd, eps = cfg.sigma_data, cfg.sigma_min
    c_skip = sd ** 2 / ((t - eps) ** 2 + sd ** 2)
    c_out = (t - eps) * sd / torch.sqrt(sd ** 2 + t ** 2)
    c_in = 1.0 / torch.sqrt(sd ** 2 + t ** 2)
    return c_skip, c_out, c_in


def karras_weight(t: torch.Tensor, cfg: ConsistencyConfig) -> torch.Tensor:
    """w(t) = 1/t^2 + 1/sigma_data^2."""
    return t ** -2 + cfg.sigma_data ** -2


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of c_noise = log(t) / 4 (EDM's noise conditioning)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    x = (0.25 * torch.log(t))[:, None] * freqs[None] * 100.0
    return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)


class ConsistencyHead(nn.Module):
    """features (B, D) -> action (B, A) in one step; ``denoise`` is f(x_t, t | s)."""

    sigmas: torch.Tensor

    def __init__(self, feature_dim: int, action_dim: int, cfg: ConsistencyConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ConsistencyConfig()
        self.action_dim = action_dim
        self.time = nn.Sequential(nn.Linear(self.cfg.time_dim, self.cfg.time_dim * 2), nn.GELU(),
                                  nn.Linear(self.cfg.time_dim * 2, self.cfg.time_dim))
        self.net = mlp(feature_dim + action_dim + self.cfg.time_dim, action_dim, self.cfg.hidden, self.cfg.layers,
                       layer_norm=True)
        self.register_buffer("sigmas", karras_sigmas(self.cfg), persistent=False)

    def denoise(self, features: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x_t, t | s) for per-row noise levels ``t`` (B,)."""
        c_skip, c_out, c_in = (c[:, None] for c in scalings(t, self.cfg))
        emb = self.time(time_features(t, self.cfg.time_dim))
        out = c_skip * x_t + c_out * self.net(torch.cat([features, c_in * x_t, emb], dim=-1))
        return out.clamp(-1.0, 1.0) if self.cfg.clip else out

    def forward(self, features: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One-step sample: f(K z, K | s), z ~ N(0, I) unless ``noise`` is given."""
        if noise is None:
            noise = torch.randn(features.shape[0], self.action_dim, device=features.device)
        t = torch.full((features.shape[0],), self.cfg.sigma_max, device=features.device)
        return self.denoise(features, self.cfg.sigma_max * noise, t)

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        """The sample from zero noise: the same action every time for the same state."""
        return self(features, torch.zeros(features.shape[0], self.action_dim, device=features.device))


def consistency_bc_loss(head: ConsistencyHead, features: torch.Tensor, actions: torch.Tensor,
                        sampled: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Karras-weighted reconstruction of noised demo actions, plus the one-step action's
    squared error (``sampled``: the head's one-step actions for these rows, if already drawn)."""
    cfg, b = head.cfg, actions.shape[0]
    i = torch.randint(0, cfg.scales - 1, (b,), generator=generator).to(actions.device)
    t = head.sigmas[i]
    z = torch.randn(actions.shape, generator=generator).to(actions.device)
    recon = head.denoise(features, actions + t[:, None] * z, t)
    recon_loss = (karras_weight(t, cfg) * ((recon - actions) ** 2).mean(-1)).mean()
    sampled = head(features) if sampled is None else sampled
    mse = ((sampled - actions) ** 2).sum(-1).mean()
    return recon_loss + cfg.sample_mse_weight * mse, {"recon_loss": recon_loss.detach(), "bc_mse": mse.detach()}
