"""Asymmetric actor-critic PPO for low-dimensional control (ASAP's tracking policies and its
delta action model).

The actor sees observations only (``obs["state"]``: what the robot senses); the critic sees
them and ``privileged_state()`` (the reference, global positions: what only a simulator
knows). The loss is PPO's (algos/ppo.py): clipped surrogate on normalised GAE advantages,
value regression to the GAE returns. Envs run in this process, one after another: a
tracking env steps ~10k times a second, faster than a round trip to a worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributions import Independent, Normal

from vlarl.algos.ppo import PPOConfig, gae, ppo_update
from vlarl.ranges import ranged


def _ppo_defaults() -> PPOConfig:
    return PPOConfig(lr=3e-4, epochs=5, minibatch_size=512, target_kl=0.05, init_log_std=-1.0)


@dataclass
class OnPolicyConfig:
    steps: int = ranged(200_000, ge=1)  # env steps
    envs: int = ranged(16, ge=1)
    rollout: int = ranged(128, ge=1)  # steps per env per update
    hidden: int = ranged(128, ge=1)
    ppo: PPOConfig = field(default_factory=_ppo_defaults)
    save_every: int = ranged(20, ge=1)  # updates between checkpoints


class RunningNorm(nn.Module):
    """Per-feature running mean and variance (Chan's parallel update); saved with the model."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(1e-4))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        mean, var = x.mean(0), x.var(0, unbiased=False)
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total
        self.count = total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / (self.var.sqrt() + 1e-6)).clamp(-10, 10)


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out))


class AsymmetricActorCritic(nn.Module):
    """Gaussian actor on observations; value critic on observations + privileged state."""

    def __init__(self, obs_dim: int, privileged_dim: int, action_dim: int, hidden: int = 128,
                 init_log_std: float = -1.0) -> None:
        super().__init__()
        self.obs_dim, self.privileged_dim, self.action_dim = obs_dim, privileged_dim, action_dim
        self.obs_norm = RunningNorm(obs_dim)
        self.privileged_norm = RunningNorm(privileged_dim)
        self.actor = mlp(obs_dim, hidden, action_dim)
        last = self.actor[-1]
        assert isinstance(last, nn.Linear)
        last.weight.data.mul_(0.01)  # start near the mean action: small, even steps
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.critic = mlp(obs_dim + privileged_dim, hidden, 1)

    def dist(self, obs: torch.Tensor) -> Independent:
        mean = self.actor(self.obs_norm(obs))
        return Independent(Normal(mean, self.log_std.exp().expand_as(mean)), 1)

    def value(self, obs: torch.Tensor, privileged: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([self.obs_norm(obs), self.privileged_norm(privileged)], -1))[..., 0]

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action (the mean) for one observation or a batch."""
        x = torch.as_tensor(np.asarray(obs, np.float32))
        return self.actor(self.obs_norm(x)).numpy()


def _privileged(env: Any) -> np.ndarray:
    return np.asarray(env.unwrapped.privileged_state(), np.float32)


def train_ppo(model: AsymmetricActorCritic, envs: Sequence[Any], cfg: OnPolicyConfig, seed: int,
              log: Callable[..., Any] | None = None, checkpoint: Callable[[int, dict[str, Any]], Any] | None = None,
              counters: dict[str, Any] | None = None, opt: torch.optim.Optimizer | None = None,
              progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Train ``model`` by PPO for ``cfg.steps`` env steps over ``envs`` (gymnasium envs with a
    ``privileged_state()`` on their base env; actions are clipped to [-1, 1] by the envs).

    ``counters`` (``env_steps``, ``updates``) and ``opt`` continue a resumed run;
    ``checkpoint(updates, counters)`` is called every ``cfg.save_every`` updates and at the end.
    Returns the counters with the last update's diagnostics and mean episode return.
    """
    ppo = cfg.ppo
    counters = dict(counters or {"env_steps": 0, "updates": 0})
    opt = opt or torch.optim.Adam(model.parameters(), lr=ppo.lr, eps=1e-5)
    gen = torch.Generator().manual_seed(seed + counters["updates"])
    n = len(envs)
    # Episodes of a resumed run start from fresh seeds: seed + updates keeps them reproducible.
    ep_seed = [seed * 100_003 + counters["updates"] * n * 1000 + i * 1000 for i in range(n)]
    obs = [env.reset(seed=ep_seed[i])[0]["state"] for i, env in enumerate(envs)]
    priv = [_privileged(env) for env in envs]
    returns_done: list[float] = []
    ep_return = np.zeros(n)
    last: dict[str, float] = {}
    while counters["env_steps"] < cfg.steps:
        T = cfg.rollout
        o_buf = torch.zeros(T, n, model.obs_dim)
        p_buf = torch.zeros(T, n, model.privileged_dim)
        a_buf = torch.zeros(T, n, model.action_dim)
        values, next_values = torch.zeros(T, n), torch.zeros(T, n)
        rewards, term, done = torch.zeros(T, n), torch.zeros(T, n, dtype=torch.bool), torch.zeros(T, n, dtype=torch.bool)
        for t in range(T):
            o = torch.as_tensor(np.stack(obs))
            p = torch.as_tensor(np.stack(priv))
            with torch.no_grad():
                dist = model.dist(o)
                action = dist.sample()
                values[t] = model.value(o, p)
            o_buf[t], p_buf[t], a_buf[t] = o, p, action
            final_o = []
            for i, env in enumerate(envs):
                ob, r, te, tr, _ = env.step(action[i].numpy())
                rewards[t, i], term[t, i], done[t, i] = float(r), te, te or tr
                ep_return[i] += r
                obs[i], priv[i] = ob["state"], _privileged(env)
                if te or tr:
                    final_o.append((i, obs[i], priv[i]))
                    returns_done.append(float(ep_return[i]))
                    ep_return[i] = 0.0
                    ep_seed[i] += 1
                    obs[i] = env.reset(seed=ep_seed[i])[0]["state"]
                    priv[i] = _privileged(env)
            if final_o:  # V of the final observation of an episode cut by the time limit
                idx = [i for i, _, _ in final_o]
                with torch.no_grad():
                    v = model.value(torch.as_tensor(np.stack([f[1] for f in final_o])),
                                    torch.as_tensor(np.stack([f[2] for f in final_o])))
                next_values[t, idx] = v
            counters["env_steps"] += n
        with torch.no_grad():
            last_v = model.value(torch.as_tensor(np.stack(obs)), torch.as_tensor(np.stack(priv)))
        following = torch.cat([values[1:], last_v[None]])
        next_v = torch.where(done, next_values, following)
        adv, ret = gae(rewards, values, next_v, term, done, ppo.gamma, ppo.gae_lambda)
        # Normalisers follow the data they will see; updated before the epochs, fixed within them.
        flat_o, flat_p = o_buf.flatten(0, 1), p_buf.flatten(0, 1)
        model.obs_norm.update(flat_o)
        model.privileged_norm.update(flat_p)
        with torch.no_grad():  # the behaviour log-probs, under the updated normaliser: ratios start at 1
            old_logp = model.dist(flat_o).log_prob(a_buf.flatten(0, 1))

        def evaluate(idx: torch.Tensor, actions: torch.Tensor, flat_o: torch.Tensor = flat_o,
                     flat_p: torch.Tensor = flat_p) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            d = model.dist(flat_o[idx])
            return d.log_prob(actions), d.entropy(), model.value(flat_o[idx], flat_p[idx])

        last = ppo_update(evaluate, a_buf.flatten(0, 1), old_logp, adv.flatten(), ret.flatten(),
                          list(model.parameters()), opt, ppo, generator=gen)
        counters["updates"] += 1
        recent = returns_done[-4 * n:]
        last["episode_return"] = float(np.mean(recent)) if recent else float("nan")
        last["std"] = float(model.log_std.detach().exp().mean())
        if log is not None:
            log(counters["env_steps"], **{f"ppo/{k}": v for k, v in last.items()})
        if progress is not None:
            progress(n * T)
        if checkpoint is not None and (counters["updates"] % cfg.save_every == 0 or counters["env_steps"] >= cfg.steps):
            checkpoint(counters["updates"], counters)
    return {**counters, **last}
