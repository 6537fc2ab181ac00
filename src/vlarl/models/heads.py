"""Action heads (deterministic, tanh-Gaussian, 256-bin tokens; all with k-step chunks) and
critic heads. Each action head maps features (B, D) to actions (B, k, A) in [-1, 1] and has
a behaviour-cloning loss; the stochastic ones give exact log-probabilities."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(d_in: int, d_out: int, hidden: int = 256, layers: int = 2, layer_norm: bool = False) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(d_in, hidden)] + ([nn.LayerNorm(hidden)] if layer_norm else []) + [nn.GELU()]
        d_in = hidden
    return nn.Sequential(*mods, nn.Linear(d_in, d_out))


class DeterministicHead(nn.Module):
    """tanh(MLP(features)); trained with mean squared error."""

    def __init__(self, dim: int, action_dim: int, chunk: int = 1) -> None:
        super().__init__()
        self.action_dim, self.chunk = action_dim, chunk
        self.net = mlp(dim, chunk * action_dim)

    def forward(self, features: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(self.net(features)).view(-1, self.chunk, self.action_dim)

    def bc_loss(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(features), actions)


class TanhGaussianHead(nn.Module):
    """a = tanh(u), u ~ N(mu, sigma); log-probabilities include the tanh change of variables."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, dim: int, action_dim: int, chunk: int = 1, layers: int = 2) -> None:
        super().__init__()
        self.action_dim, self.chunk = action_dim, chunk
        self.net = mlp(dim, 2 * chunk * action_dim, layers=layers)  # layers=0: one linear map

    def distribution(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(features).view(-1, self.chunk, 2, self.action_dim).unbind(2)
        return mu, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def forward(self, features: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        mu, log_std = self.distribution(features)
        return torch.tanh(mu if deterministic else mu + log_std.exp() * torch.randn_like(mu))

    def sample(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample and its log-probability summed over chunk and dims."""
        mu, log_std = self.distribution(features)
        u = mu + log_std.exp() * torch.randn_like(mu)
        return torch.tanh(u), self._log_prob_u(u, mu, log_std)

    def log_prob(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mu, log_std = self.distribution(features)
        a = actions.clamp(-1 + 1e-6, 1 - 1e-6)
        return self._log_prob_u(torch.atanh(a), mu, log_std)

    @staticmethod
    def _log_prob_u(u: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        gauss = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        # log |d tanh(u)/du| = log(1 - tanh(u)^2), written stably
        log_det = 2 * (math.log(2) - u - F.softplus(-2 * u))
        return (gauss - log_det).sum(dim=(-2, -1))

    def bc_loss(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return -self.log_prob(features, actions).mean()


class TokenHead(nn.Module):
    """Each action dimension as one of ``bins`` uniform tokens over [-1, 1] (RT-2 / OpenVLA
    style); exact categorical log-probabilities; trained with cross-entropy."""

    def __init__(self, dim: int, action_dim: int, chunk: int = 1, bins: int = 256) -> None:
        super().__init__()
        self.action_dim, self.chunk, self.bins = action_dim, chunk, bins
        self.net = mlp(dim, chunk * action_dim * bins)

    def logits(self, features: torch.Tensor) -> torch.Tensor:  # (B, k, A, bins)
        return self.net(features).view(-1, self.chunk, self.action_dim, self.bins)

    def tokenize(self, actions: torch.Tensor) -> torch.Tensor:
        return ((actions.clamp(-1, 1) + 1) / 2 * (self.bins - 1)).round().long()

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float() / (self.bins - 1) * 2 - 1

    def forward(self, features: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        logits = self.logits(features)
        if deterministic:
            tokens = logits.argmax(-1)
        else:
            tokens = torch.distributions.Categorical(logits=logits).sample()
        return self.detokenize(tokens)

    def log_prob(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Sum over chunk and dims of log p(token of each action value)."""
        logp = self.logits(features).log_softmax(-1)
        return logp.gather(-1, self.tokenize(actions)[..., None]).squeeze(-1).sum(dim=(-2, -1))

    def bc_loss(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        logits = self.logits(features)
        return F.cross_entropy(logits.reshape(-1, self.bins), self.tokenize(actions).reshape(-1))


class ValueHead(nn.Module):
    """V(s) from features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = mlp(dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


class CriticHead(nn.Module):
    """An ensemble of E critics Q(s, a) as one batched module (stacked weights, one batched
    matmul per layer, no Python loop over critics); LayerNorm and ReLU in the hidden layers,
    as RLPD's critics have."""

    def __init__(self, dim: int, action_dim: int, ensemble: int = 2, hidden: int = 256, layers: int = 2,
                 hidden_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        sizes = [dim + action_dim] + [hidden] * layers + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in itertools.pairwise(sizes):
            w = torch.empty(ensemble, d_in, d_out)
            for e in range(ensemble):
                nn.init.kaiming_uniform_(w[e].T, a=math.sqrt(5))
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(ensemble, 1, d_out)))
        # LayerNorm with a scale and shift of each critic's own
        self.norm_scale = nn.Parameter(torch.ones(layers, ensemble, 1, hidden))
        self.norm_shift = nn.Parameter(torch.zeros(layers, ensemble, 1, hidden))
        self.ensemble, self.hidden = ensemble, hidden
        self.hidden_dtype = hidden_dtype  # torch.bfloat16: the hidden x hidden products in bfloat16

    def forward(self, features: torch.Tensor, actions: torch.Tensor,
                members: torch.Tensor | None = None) -> torch.Tensor:
        """features (B, D), actions (B, A) -> Q (E, B); only the critics ``members`` (indices)
        when given, so a target over a subset costs only that subset."""
        n = self.ensemble if members is None else len(members)
        x = torch.cat([features, actions], -1).expand(n, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if members is not None:
                w, b = w[members], b[members]
            if 0 < i < last and self.hidden_dtype != torch.float32:
                # hidden x hidden products in bfloat16 (fp32 accumulation); input and output layers stay fp32
                x = torch.baddbmm(b.to(self.hidden_dtype), x.to(self.hidden_dtype), w.to(self.hidden_dtype)).float()
            else:
                x = torch.baddbmm(b, x, w)
            if i < last:
                scale, shift = self.norm_scale[i], self.norm_shift[i]
                if members is not None:
                    scale, shift = scale[members], shift[members]
                x = F.relu(torch.addcmul(shift, F.layer_norm(x, (self.hidden,)), scale))
        return x.squeeze(-1)


ACTION_HEADS = {"deterministic": DeterministicHead, "gaussian": TanhGaussianHead, "tokens": TokenHead}
