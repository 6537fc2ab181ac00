"""Cal-QL: CQL's conservative regulariser, calibrated by the data's Monte-Carlo return.

CQL pushes Q down on actions the data does not hold and up on the data's own,

    R(s) = T log( mean_j exp(Q(s, a_j) / T) ) - Q(s, a_data),

a_j = N uniform random actions, N policy actions at s and N policy actions at s' (all scored
at s), plus the data action itself, without importance weights (as ConRFT's release). Cal-QL
(Nakamoto et al. 2023) floors the policy actions' values by the Monte-Carlo return of the
data from s, Q(s, a_pi) -> max(Q(s, a_pi), G(s)): the critic is then never pushed below what
the demonstrations are known to earn, so online fine-tuning starts calibrated instead of
"unlearning" a pessimistic critic. Random actions are not floored (the Cal-QL paper floors
the policy's). The critic loss is the TD error plus alpha R, R clipped to
[clip_diff_min, clip_diff_max].

The TD target has no entropy term (the consistency policy has no tractable log-probability):
y = c r + gamma (1 - terminated) min over Z critics of Q'(s', a'), a' = pi(s') one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vlarl.algos.sac import bootstrap, next_features, target_subset
from vlarl.ranges import ranged


@dataclass
class CalQLConfig:
    alpha: float = ranged(0.1, ge=0)  # weight of the regulariser (ConRFT's release)
    n_actions: int = ranged(10, ge=1)  # N random, N policy-at-s, N policy-at-s' actions (paper: 10 + 10)
    temperature: float = ranged(1.0, gt=0)
    clip_diff_min: float = ranged(-math.inf)
    clip_diff_max: float = ranged(math.inf)
    floor: bool = True  # the Cal-QL floor; False is plain CQL(H)


def calql_regulariser(q_data: torch.Tensor, q_random: torch.Tensor, q_policy: torch.Tensor,
                      mc_return: torch.Tensor | None, cfg: CalQLConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """R per critic and state, (E, B).

    q_data (E, B): Q at the data actions; q_random (E, B, Nr) and q_policy (E, B, Np): Q at
    random and policy actions; mc_return (B,): the data's discounted return from s.
    """
    info = {}
    if cfg.floor and mc_return is not None:
        floor = mc_return[None, :, None].expand_as(q_policy)
        info["calql_bound_rate"] = (q_policy < floor).float().mean()
        q_policy = torch.maximum(q_policy, floor)
    q_all = torch.cat([q_random, q_policy, q_data[..., None]], dim=-1)
    t = cfg.temperature
    ood = t * (torch.logsumexp(q_all / t, dim=-1) - math.log(q_all.shape[-1]))
    return ood - q_data, info


def q_at_many(critic, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Q of N actions per state: features (B, D), actions (B, N, A) -> (E, B, N)."""
    b, n, a = actions.shape
    q = critic(features.repeat_interleave(n, 0), actions.reshape(b * n, a))
    return q.view(-1, b, n)


def calql_critic_loss(agent, batch: dict[str, Any], cfg: CalQLConfig, conservative: bool,
                      policy: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TD loss (+ alpha R when ``conservative``) for an agent with ``critic``, ``target_critic``
    and a one-step ``policy(features) -> actions``."""
    sac = agent.sac_cfg
    subset = target_subset(sac, batch["reward"].device)
    next_f, target_f = next_features(agent, batch)
    with torch.no_grad():
        q_next = agent.target_critic(target_f, policy(next_f), members=subset).min(0).values
        y = bootstrap(sac, batch, q_next)
    features = agent.critic.features(batch["obs"])
    q = agent.critic(features, batch["action"])  # (E, B)
    td = ((q - y) ** 2).mean()
    info = {"td_loss": td.detach(), "q_data": q.mean().detach()}
    if not conservative:
        return td, info
    b, n, dim = q.shape[1], cfg.n_actions, batch["action"].shape[-1]
    with torch.no_grad():  # the regulariser trains the critic only
        random = torch.rand(b, n, dim, device=q.device) * 2 - 1
        f_rep, nf_rep = features.detach().repeat_interleave(n, 0), next_f.repeat_interleave(n, 0)
        at_s = policy(f_rep).view(b, n, dim)
        at_next = policy(nf_rep).view(b, n, dim)
    q_random = q_at_many(agent.critic, features, random)
    q_policy = q_at_many(agent.critic, features, torch.cat([at_s, at_next], dim=1))
    mc = batch.get("mc_return")  # in reward units; the critic learns scaled rewards
    diff, extra = calql_regulariser(q, q_random, q_policy, None if mc is None else sac.reward_scale * mc, cfg)
    reg = diff.clamp(cfg.clip_diff_min, cfg.clip_diff_max).mean()
    info.update(extra, calql_diff=reg.detach(), q_policy=q_policy.mean().detach())
    return td + cfg.alpha * reg, info
