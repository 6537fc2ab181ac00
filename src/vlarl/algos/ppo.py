"""Proximal policy optimisation (clipped surrogate, GAE), for any action head.

The learning rule, top to bottom:

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}          (GAE)
    R_t     = A_t + V(s_t)                                                (value target)
    ratio   = exp(log pi(a|s) - log pi_old(a|s))
    L_pi    = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))    (A normalised per minibatch)
    L_V     = 0.5 * mean((V(s) - R)^2)
    L       = L_pi + vf_coef * L_V - ent_coef * entropy

A *policy* here is anything that maps features to a ``torch.distributions.Distribution``
over one env action whose ``log_prob`` / ``entropy`` are per-sample: ``ActionDistribution``
turns any of vlarl's action heads into one (a Gaussian with a learned, state-independent
standard deviation around a deterministic head; the categorical of a token head; the
tanh-Gaussian's own). ``ppo_update`` runs the minibatch epochs through an ``evaluate``
callback, so the caller decides what is trained (a head on cached features, or a whole
model on raw observations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from vlarl.errors import VlarlError
from vlarl.ranges import ranged


@dataclass
class PPOConfig:
    lr: float = ranged(1e-4, gt=0)
    epochs: int = ranged(4, ge=1)
    minibatch_size: int = ranged(256, ge=1)
    clip: float = ranged(0.2, gt=0)
    gamma: float = ranged(0.99, gt=0, le=1)
    gae_lambda: float = ranged(0.95, ge=0, le=1)
    vf_coef: float = ranged(0.5, ge=0)
    ent_coef: float = ranged(0.0, ge=0)
    max_grad_norm: float = ranged(0.5, gt=0)
    normalize_advantages: bool = True
    target_kl: float | None = ranged(0.05, gt=0)  # stop the epochs early once the policy moved this far
    init_log_std: float = ranged(-1.6)  # Gaussian exploration around a deterministic head (std ~0.2)


# --- returns ------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        done: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a rollout laid out (T, N).

    ``next_values[t]`` is V of the observation after step t (the episode's final observation
    when it ended there); ``terminated`` stops bootstrapping (a true end), ``done`` (ended
    for any reason, time limit included) stops the trace from running into the next episode.
    Returns (advantages, returns).
    """
    not_term, not_done = 1.0 - terminated.float(), 1.0 - done.float()
    deltas = rewards + gamma * next_values * not_term - values
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        running = deltas[t] + gamma * lam * not_done[t] * running
        adv[t] = running
    return adv, adv + values


# --- loss ---------------------------------------------------------------------------------
def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             returns: torch.Tensor, entropy: torch.Tensor, cfg: PPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped PPO objective on one minibatch; returns (loss, diagnostics)."""
    if cfg.normalize_advantages and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    pg_loss = -torch.min(ratio * advantages, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantages).mean()
    v_loss = 0.5 * F.mse_loss(values, returns)
    ent = entropy.mean()
    loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean().item()  # the low-variance k3 estimator
        clipfrac = ((ratio - 1).abs() > cfg.clip).float().mean().item()
    return loss, {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(), "entropy": ent.item(),
                  "approx_kl": approx_kl, "clipfrac": clipfrac}


# --- update -------------------------------------------------------------------------------
class Evaluate(Protocol):
    """``(idx, actions[idx]) -> (log_prob, entropy, value)``; extra arguments must have defaults."""

    def __call__(self, idx: torch.Tensor, actions: torch.Tensor, /) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ...


def ppo_update(evaluate: Evaluate, actions: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
               returns: torch.Tensor, params: list[nn.Parameter], opt: torch.optim.Optimizer, cfg: PPOConfig,
               generator: torch.Generator | None = None) -> dict[str, float]:
    """Minibatch epochs over a flattened rollout (M samples).

    ``evaluate(idx, actions[idx]) -> (log_prob, entropy, value)`` under the current
    parameters; ``params`` are the ones clipped and stepped. Returns mean diagnostics.
    """
    n = len(actions)
    stats: dict[str, list[float]] = {}
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.minibatch_size):
            idx = perm[start : start + cfg.minibatch_size]
            logp, entropy, value = evaluate(idx, actions[idx])
            loss, info = ppo_loss(logp, old_logp[idx], advantages[idx], value, returns[idx], entropy, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            info["grad_norm"] = float(nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            opt.step()
            for k, v in info.items():
                stats.setdefault(k, []).append(v)
        if cfg.target_kl is not None and stats["approx_kl"][-1] > cfg.target_kl:
            break
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["epochs_run"] = len(stats["approx_kl"]) / math.ceil(n / cfg.minibatch_size)
    return out


# --- policies over any head ---------------------------------------------------------------
class ActionDistribution(nn.Module):
    """Wraps an action head (chunk 1) as a PPO policy: ``features -> Distribution`` over
    (B, A) actions. A deterministic head becomes the mean of a Gaussian whose log standard
    deviation (one per action dim) is learned here; a token head is a categorical per dim
    (actions are the bin centres); a tanh-Gaussian head keeps its own distribution."""

    def __init__(self, head: nn.Module, init_log_std: float = -1.6) -> None:
        super().__init__()
        head_: Any = head  # one of the action heads; each kind is used through its own methods below
        if getattr(head_, "chunk", 1) != 1:
            raise VlarlError(f"PPO acts one step at a time; the action head predicts chunks of {head_.chunk}")
        self.head: Any = head
        self.kind = type(head).__name__
        if self.kind == "DeterministicHead":
            self.log_std = nn.Parameter(torch.full((head_.action_dim,), float(init_log_std)))

    def forward(self, features: torch.Tensor) -> Distribution:
        if self.kind == "DeterministicHead":
            mean = self.head(features)[:, 0]
            return Independent(Normal(mean, self.log_std.exp().expand_as(mean)), 1)
        if self.kind == "TokenHead":
            return _TokenDistribution(self.head, self.head.logits(features)[:, 0])
        if self.kind == "TanhGaussianHead":
            return _TanhGaussian(self.head, features)
        raise VlarlError(f"PPO has no distribution for head {self.kind}")


class _TokenDistribution(Independent):
    """Categorical over bins per action dim; samples and log-probabilities in action units."""

    def __init__(self, head: nn.Module, logits: torch.Tensor) -> None:
        super().__init__(Categorical(logits=logits), 1)
        self._head: Any = head

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = torch.Size()) -> torch.Tensor:  # noqa: B008
        return self._head.detokenize(super().sample(sample_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(self._head.tokenize(value))

    @property
    def mode(self) -> torch.Tensor:
        return self._head.detokenize(self.base_dist.logits.argmax(-1))


class _TanhGaussian(Distribution):
    """The tanh-Gaussian head's exact log-probabilities; entropy estimated by -log p of one
    sample (it has no closed form)."""

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, head: nn.Module, features: torch.Tensor) -> None:
        self._head: Any = head
        self._features = features
        super().__init__(validate_args=False)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = torch.Size()) -> torch.Tensor:  # noqa: B008
        with torch.no_grad():
            return self._head.sample(self._features)[0][:, 0]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self._head.log_prob(self._features, value[:, None])

    def entropy(self) -> torch.Tensor:
        return -self._head.sample(self._features)[1]

    @property
    def mode(self) -> torch.Tensor:
        return self._head(self._features)[:, 0]


def mode(dist: Distribution) -> torch.Tensor:
    """The deterministic action of a policy distribution (the mean for a Gaussian)."""
    if isinstance(dist, Independent) and isinstance(dist.base_dist, Normal):
        return dist.base_dist.loc
    return dist.mode
