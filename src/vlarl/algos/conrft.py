"""ConRFT's learner: a consistency policy trained against a Cal-QL critic, offline then online.

    critic:  offline  TD + alpha Cal-QL regulariser        (vlarl.algos.calql)
             online   TD only (``calql_online: true`` keeps the regulariser)
    actor:   loss = -eta mean_i Q_i(s, pi(s)) + beta L_BC(demo rows)   (vlarl.algos.consistency)
             offline: eta_offline, beta_offline; online: eta_online and beta decaying on
             ``beta_schedule`` with the online env steps, so the Q term takes over.

The BC term is computed only on the rows of a minibatch that come from the demo buffer
(demos and human interventions), never on the policy's own rollouts. The critic is the SAC
recipes' ensemble (``vlarl.algos.sac.Critic``: LayerNorm MLPs, a shared pixel encoder); one
update is ``actor_every`` critic steps and one actor step, as there.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vlarl.algos.calql import CalQLConfig, calql_critic_loss
from vlarl.algos.consistency import ConsistencyConfig, ConsistencyHead, consistency_bc_loss
from vlarl.algos.sac import Critic, SACConfig, SoftUpdate, frozen
from vlarl.errors import VlarlError
from vlarl.ranges import ranged

SCHEDULES = ("linear", "exponential", "constant")


@dataclass
class BetaSchedule:
    """beta over the online stage: ``start`` at its first env step to ``end`` after ``steps``."""

    start: float = ranged(0.5, ge=0)
    # 0.05 (ConRFT's release floor) let the Q term take the toy reach policy from 1.00 to 0.15
    # success within 2k steps of reaching it; 0.2 held 1.00 (same seed and budget)
    end: float = ranged(0.2, ge=0)
    steps: int = ranged(20_000, ge=0)  # 0: ``start`` throughout
    kind: str = ranged("linear", choices=SCHEDULES)  # linear | exponential | constant

    def __call__(self, step: int) -> float:
        if self.kind not in SCHEDULES:
            raise VlarlError(f"conrft.beta_schedule.kind must be one of {list(SCHEDULES)}, got {self.kind!r}")
        if self.kind == "constant" or self.steps <= 0:
            return self.start
        frac = min(max(step, 0) / self.steps, 1.0)
        if self.kind == "linear":
            return self.start + frac * (self.end - self.start)
        if self.start <= 0 or self.end <= 0:
            raise VlarlError("conrft.beta_schedule: an exponential schedule needs start and end > 0")
        return self.start * (self.end / self.start) ** frac


@dataclass
class ConRFTConfig:
    eta_offline: float = ranged(0.1, ge=0)  # weight of -Q in the actor loss (paper: offline 0.1, online 1)
    beta_offline: float = ranged(1.0, ge=0)  # weight of the consistency BC loss offline
    eta_online: float = ranged(1.0, ge=0)
    beta_schedule: BetaSchedule = field(default_factory=BetaSchedule)
    calql: CalQLConfig = field(default_factory=CalQLConfig)
    calql_online: bool = False
    # -eta Q / mean|Q| (TD3+BC's normalisation): the Q term's scale no longer follows the reward's.
    # On pick-cube (same offline start, 4k online steps) raw -Q rose to 1.00 success and then fell
    # to 0.40 as beta decayed; normalised it stayed at 0.90-1.00 with shorter episodes
    q_normalize: bool = True
    # fresh Adam moments for the actor when the online stage begins: offline, the BC gradients set
    # Adam's second moments small, so the first online (Q-dominated) gradients take oversized steps
    reset_actor_optimizer: bool = False
    policy: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    actor_lr: float = ranged(3e-4, gt=0)


class ConRFTAgent(nn.Module):
    """Critic ensemble (+ target) and a consistency actor on the critic's features."""

    def __init__(self, sac_cfg: SACConfig, cfg: ConRFTConfig, state_dim: int, action_dim: int,
                 cameras: dict | None = None) -> None:
        super().__init__()
        if sac_cfg.gripper_critic:
            raise VlarlError("conrft: sac.gripper_critic must be false (the consistency policy outputs the gripper too)")
        self.sac_cfg, self.cfg, self.action_dim = sac_cfg, cfg, action_dim
        self.critic = Critic(state_dim, action_dim, sac_cfg, cameras)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor = ConsistencyHead(self.critic.feature_dim, action_dim, cfg.policy)

    def param_group(self, name: str) -> str:
        return "backbone" if ".encoder." in name else "head"

    @torch.no_grad()
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> torch.Tensor:
        f = self.critic.features(obs)
        return self.actor.mode(f) if deterministic else self.actor(f)


def actor_loss(agent: ConRFTAgent, batch: dict[str, Any], eta: float, beta: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-eta mean Q(s, pi(s)) + beta L_BC on the demo rows (``batch["offline"]``; all rows if absent)."""
    features = agent.critic.features(batch["obs"]).detach()  # the encoder learns from the critic only
    action = agent.actor(features)
    with frozen(agent.critic.q):  # gradients reach the action, not the critic's weights
        q = agent.critic(features, action).mean(0)
    demo = batch.get("offline")
    rows = demo.nonzero().squeeze(-1) if demo is not None else slice(None)
    scale = q.abs().mean().detach().clamp_min(1e-6) if agent.cfg.q_normalize else 1.0
    loss = -eta * q.mean() / scale
    info = {"q_pi": q.mean().detach(), "eta": torch.tensor(eta), "beta": torch.tensor(beta)}
    if beta > 0 and (demo is None or bool(demo.any())):
        bc, bc_info = consistency_bc_loss(agent.actor, features[rows], batch["action"][rows], action[rows], generator)
        loss = loss + beta * bc
        info.update(bc_info, bc_loss=bc.detach())
    return loss, info


class ConRFTLearner:
    """Optimisers and the update: ``actor_every`` critic steps, then one actor step."""

    def __init__(self, agent: ConRFTAgent, generator: torch.Generator | None = None) -> None:
        self.agent = agent
        self.critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=agent.sac_cfg.lr)
        self.actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=agent.cfg.actor_lr)
        self.generator = generator
        self.soft_update = SoftUpdate(agent.target_critic, agent.critic)
        self.offline = False  # the recipe sets it for the offline stage
        self.env_steps = 0  # online env steps so far (the runtime sets it): drives beta
        # As SACLearner's: called with the parameters about to be stepped, after each backward.
        self.grad_sync: Callable[[Iterable[nn.Parameter]], None] | None = None

    # What an update reads besides its batches; a data-parallel group sends these to every process.
    schedule_attrs = ("env_steps", "offline")

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "actor": self.actor_opt}

    def weights(self) -> tuple[float, float]:
        """(eta, beta) now."""
        cfg = self.agent.cfg
        if self.offline:
            return cfg.eta_offline, cfg.beta_offline
        return cfg.eta_online, cfg.beta_schedule(self.env_steps)

    def update(self, batches: list[dict[str, Any]], update_actor: bool = True) -> dict[str, torch.Tensor]:
        agent, cfg = self.agent, self.agent.cfg
        sync = self.grad_sync or (lambda _params: None)
        conservative = self.offline or cfg.calql_online
        info: dict[str, torch.Tensor] = {}
        # behaviour cloning alone (eta 0 offline): nothing reads the critic, so it is not trained
        critic_batches = [] if self.offline and cfg.eta_offline == 0 else batches
        loss_q = torch.zeros(())
        for batch in critic_batches:
            loss_q, info = calql_critic_loss(agent, batch, cfg.calql, conservative, agent.actor)
            self.critic_opt.zero_grad(set_to_none=True)
            loss_q.backward()
            sync(agent.critic.parameters())
            self.critic_opt.step()
            self.soft_update(agent.sac_cfg.tau)
        info = {"critic_loss": loss_q.detach(), **info}
        if update_actor:
            eta, beta = self.weights()
            loss_pi, pi_info = actor_loss(agent, batches[-1], eta, beta, self.generator)
            self.actor_opt.zero_grad(set_to_none=True)
            loss_pi.backward()
            sync(p for g in self.actor_opt.param_groups for p in g["params"])
            self.actor_opt.step()
            info.update(actor_loss=loss_pi.detach(), **pi_info)
        return info
