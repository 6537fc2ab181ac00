"""SAC with RLPD's options, written to be checked against the paper line by line.

    critic:  y = c * r + gamma * (1 - terminated) * (min_{j in Z} Q'_j(s', a') - alpha * log pi(a'|s')),
             a' ~ pi(.|s'), Z a random subset of ``subset`` distinct critics out of ``ensemble``,
             c = ``reward_scale``;
             loss = mean over critics and batch of (Q_i(s, a) - y)^2
    actor:   loss = mean(alpha * log pi(a|s) - mean_i Q_i(s, a)),  a ~ pi(.|s)
    alpha:   loss = -mean(log_alpha * (log pi(a|s) + target_entropy)),  target_entropy = -|A| / 2

One update = ``actor_every`` critic steps (each on its own minibatch, all sampled in one call)
and one actor + temperature step; ``utd`` is critic steps per env step, the rate the
off-policy loop (runtime/offpolicy.py) keeps. By default ``actor_every`` is ``utd``: one
update per env step, as RLPD counts it. The E critics are one batched module
(stacked weights, no Python loop over critics) with LayerNorm. With pixels, a conv encoder
is shared by the critics and trained by the critic loss only; the actor reads its features
detached.

Optional gripper critic (HIL-SERL's grasp critic): the last action dimension is a gripper
command in {-1 open, 0 stay, +1 close}, learned by double DQN on the critic features,

    gripper: y = r + gamma * (1 - terminated) * Q'_g(s', argmax_b Q_g(s', b)),
             loss = mean (Q_g(s, b) - y)^2, b the stored command,

while SAC's actor and ensemble see only the continuous dimensions; the policy's gripper
command is argmax_b Q_g(s, b) (epsilon-greedy while exploring).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlarl.data.augment import random_grid_shift, random_shift
from vlarl.errors import ConfigError, VlarlError
from vlarl.models.encoders import FrameEncoder, channel_maps, make_encoder
from vlarl.models.heads import CriticHead, TanhGaussianHead, mlp
from vlarl.models.policy import ENCODERS
from vlarl.ranges import ranged

# bfloat16 runs the critics' hidden x hidden products (and a pixel encoder's convolutions) at
# twice the fp32 rate or more on CPUs with AVX512-BF16/AMX and on GPUs; weights, accumulation,
# LayerNorm and the Q outputs stay fp32.
CRITIC_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class SACConfig:
    ensemble: int = ranged(10, ge=1)  # E critics
    subset: int = ranged(2, ge=1)  # Z: the target is the min over Z distinct critics
    utd: float = ranged(20, gt=0)  # G: critic steps per env step (the update-to-data ratio)
    # critic steps per actor step, i.e. minibatches per update (HIL-SERL's critic-to-actor
    # ratio); None: utd rounded, one actor step per env step (RLPD)
    actor_every: int | None = ranged(None, ge=1)
    batch_size: int = ranged(256, ge=1)
    offline_ratio: float = ranged(0.5, ge=0, le=1)  # share of each minibatch drawn from the offline data
    gamma: float = ranged(0.99, gt=0, le=1)
    # Q grows at most about lr x (hidden units) per step through a LayerNorm critic, so large
    # dense rewards (Meta-World: up to 10 per step) learn slowly unless scaled down.
    reward_scale: float = ranged(1.0, gt=0)
    tau: float = ranged(0.005, gt=0, le=1)
    lr: float = ranged(3e-4, gt=0)
    hidden: int = ranged(256, ge=1)
    layers: int = ranged(2, ge=1)
    actor_layer_norm: bool = False  # LayerNorm in the actor's hidden layers (SERL / HIL-SERL's policy has it)
    init_temperature: float = ranged(1.0, gt=0)
    target_entropy: float | None = ranged(None)  # None: -|A| / 2
    backup_entropy: bool = True
    encoder: str = ranged("conv", choices=ENCODERS)  # for pixel observations: "conv" or "efficientnet-lite0"
    feature_dim: int = ranged(50, ge=1)  # pixel features after the encoder's projection
    augment: bool = True  # random shift of pixel observations (of the feature grid, for cached features)
    # A frozen encoder's output for a frame never changes, so each frame is encoded once (on the
    # actor, which encodes it to act anyway) and its tokens are stored in the replay instead of
    # being recomputed for every minibatch; the learner runs only the trainable layers.
    cache_features: bool = True
    # Learned spatial embeddings over the token grid (HIL-SERL's bottleneck over a frozen
    # ResNet): ``spatial_kernels`` learned maps per channel, each summing the grid to one value;
    # 0: today's flatten + linear projection of every token.
    spatial_kernels: int = ranged(0, ge=0)
    feature_shift: int = ranged(1, ge=0)  # cells of random shift on a cached feature grid (with augment)
    # average-pool the encoder's grid by this factor per side before anything reads it (2: the
    # 8 x 8 stride-16 grid of a 128 px frame becomes 4 x 4, HIL-SERL's ResNet-10 grid; 4x fewer bytes)
    feature_pool: int = ranged(1, ge=1)
    compile: bool = False  # torch.compile the critic loss (fused kernels; on CPU it needs a C++ compiler)
    # "bfloat16": critics' hidden products and pixel convolutions in bfloat16
    critic_dtype: str = ranged("float32", choices=tuple(CRITIC_DTYPES))
    gripper_critic: bool = False  # last action dim: a DQN over {-1, 0, +1} instead of the actor
    gripper_epsilon: float = ranged(0.0, ge=0, le=1)  # random gripper command while exploring (not when deterministic)

    def critic_steps_per_actor_step(self) -> int:
        """``actor_every``, or the critic steps of one env step (at least one)."""
        return self.actor_every or max(1, round(self.utd))

    def __post_init__(self) -> None:
        self.utd = float(self.utd)  # one spelling in config.yaml, however it was given
        if self.subset > self.ensemble:  # otherwise the min would silently be over all E
            raise ConfigError(f"sac.subset (Z={self.subset}) must be at most sac.ensemble (E={self.ensemble}): "
                              "the target is the min over Z distinct critics of the E")


GRIPPER_COMMANDS = (-1.0, 0.0, 1.0)  # open, stay, close


def gripper_index(command: torch.Tensor) -> torch.Tensor:
    """Continuous gripper commands in [-1, 1] -> indices into GRIPPER_COMMANDS (|x| < 0.5 is stay)."""
    return (command.round().clamp(-1, 1) + 1).long()


def feature_maps(tokens: torch.Tensor) -> torch.Tensor:
    """Cached tokens (B, C, N), any float dtype -> contiguous float32 channel maps (B, C, N)."""
    return tokens.to(torch.float32, memory_format=torch.contiguous_format)


class SpatialEmbedding(nn.Module):
    """Channel maps (B, C, N) -> (B, C * K): K learned maps over the N grid cells for each
    channel, each one a weighted sum of that channel over the grid (HIL-SERL's spatial learned
    embeddings)."""

    def __init__(self, channels: int, cells: int, kernels: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(channels, cells, kernels) / cells ** 0.5)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        # one (K, N) x (N, B) product per channel, the batch as the long side: on one CPU thread
        # about 1.5x faster than (B, N) x (N, K) products, and the maps are read as stored
        per_channel = torch.matmul(self.kernel.transpose(1, 2), maps.permute(1, 2, 0))  # (C, K, B)
        return per_channel.permute(2, 0, 1).flatten(1)


class PixelFeatures(nn.Module):
    """Camera frames, or their cached tokens, -> a feature vector.

    Tokens are channel maps, (channels, cells) a frame: the layout the replay stores (a
    frame's tokens from ``FrameEncoder``), so a minibatch is converted to float32 (B, C, N) once
    and shared by every head that reads it. ``tokens`` runs the encoder (or takes the cached tokens of a frozen
    one, ``obs["features"]``); ``head`` is the trainable part: per camera a spatial embedding
    (``spatial_kernels``) or a flatten, then Linear -> LayerNorm -> tanh over all cameras, as
    DrQ-v2 projects conv features.
    """

    def __init__(self, encoder: str, cameras: dict[str, tuple[int, int, int]], feature_dim: int,
                 dtype: torch.dtype = torch.float32, spatial_kernels: int = 0, cache: bool = True,
                 pool: int = 1) -> None:
        super().__init__()
        self.cameras, self.dtype, self.pool = list(cameras), dtype, pool
        self.encoder = make_encoder(encoder, frozen=True)
        size = next(iter(cameras.values()))[0]
        with torch.no_grad():
            probe = self.encoder(torch.zeros(1, size, size, 3, dtype=torch.uint8))
            channels, cells = channel_maps(probe, pool).shape[1:]
        self.token_shape = (int(channels), int(cells))
        # the encoder is frozen and its tokens may be stored: actors and buffers then carry tokens
        self.caches = cache and bool(self.encoder.frozen)
        self.spatial = nn.ModuleDict({c: SpatialEmbedding(channels, cells, spatial_kernels) for c in self.cameras}) \
            if spatial_kernels else None
        per_camera = channels * spatial_kernels if spatial_kernels else cells * channels
        self.proj = nn.Sequential(nn.Linear(per_camera * len(cameras), feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def frame_encoder(self) -> FrameEncoder | None:
        """What turns frames into the tokens this head reads (None: the encoder trains, nothing to cache)."""
        return FrameEncoder(self.encoder, self.cameras, self.token_shape, self.pool) if self.caches else None

    def tokens(self, obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Camera -> float32 channel maps (B, C, N): from the cached tokens (B, C, N) when ``obs``
        has them, else from the encoder run now."""
        if "features" in obs:
            # laid out once per observation batch and kept beside it: the online critic, the target
            # critic and the actor step all read the same minibatch's maps
            if "maps" not in obs:
                obs["maps"] = {c: feature_maps(obs["features"][c]) for c in self.cameras}
            return obs["maps"]
        pixels = obs["pixels"]
        device = next(iter(pixels.values())).device.type
        # bfloat16: the encoder's convolutions under autocast; the projection and LayerNorm in fp32
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            return {c: feature_maps(channel_maps(self.encoder(pixels[c]), self.pool)) for c in self.cameras}

    def head(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.spatial is not None:
            parts = [self.spatial[c](tokens[c]) for c in self.cameras]
        else:
            # token-major (B, N * C), the order this projection has always had: older checkpoints load as they were
            parts = [tokens[c].transpose(1, 2).flatten(1) for c in self.cameras]
        return self.proj(torch.cat(parts, dim=1))

    def forward(self, obs: dict[str, Any]) -> torch.Tensor:
        return self.head(self.tokens(obs))


class Critic(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, cfg: SACConfig, cameras: dict | None) -> None:
        super().__init__()
        if cfg.critic_dtype not in CRITIC_DTYPES:
            raise VlarlError(f"sac.critic_dtype must be one of {list(CRITIC_DTYPES)}, got {cfg.critic_dtype!r}")
        dtype = CRITIC_DTYPES[cfg.critic_dtype]
        self.pixels = (PixelFeatures(cfg.encoder, cameras, cfg.feature_dim, dtype, cfg.spatial_kernels,
                                     cfg.cache_features, cfg.feature_pool) if cameras else None)
        self.feature_dim = state_dim + (cfg.feature_dim if cameras else 0)
        self.continuous_dim = action_dim - 1 if cfg.gripper_critic else action_dim
        self.q = CriticHead(self.feature_dim, self.continuous_dim, cfg.ensemble, cfg.hidden, cfg.layers,
                            hidden_dtype=dtype)
        self.gripper = (mlp(self.feature_dim, len(GRIPPER_COMMANDS), cfg.hidden, cfg.layers, layer_norm=True)
                        if cfg.gripper_critic else None)

    def features(self, obs: dict[str, Any], tokens: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """State (+ pixel features); ``tokens``: the encoder's output for ``obs``, when already computed."""
        if self.pixels is None:
            return obs["state"]
        pixels = self.pixels.head(tokens) if tokens is not None else self.pixels(obs)
        return torch.cat([obs["state"], pixels], dim=-1)

    def forward(self, features: torch.Tensor, action: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        return self.q(features, action, members)  # (E, B), or (len(members), B)


class Actor(nn.Module):
    def __init__(self, feature_dim: int, action_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.trunk = mlp(feature_dim, cfg.hidden, cfg.hidden, cfg.layers - 1, layer_norm=cfg.actor_layer_norm)
        self.head = TanhGaussianHead(cfg.hidden, action_dim, layers=0)  # RLPD's actor: ``layers`` x hidden

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled action (B, A) and its log-probability (B,)."""
        a, logp = self.head.sample(F.gelu(self.trunk(features)))
        return a[:, 0], logp

    def mode(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.trunk(features)), deterministic=True)[:, 0]


class SACAgent(nn.Module):
    def __init__(self, cfg: SACConfig, state_dim: int, action_dim: int, cameras: dict | None = None) -> None:
        super().__init__()
        self.cfg, self.action_dim = cfg, action_dim
        self.critic = Critic(state_dim, action_dim, cfg, cameras)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        continuous = self.critic.continuous_dim
        if continuous < 1:
            raise VlarlError(f"sac.gripper_critic needs at least one continuous action dimension besides the gripper; "
                             f"the env has {action_dim}")
        self.actor = Actor(self.critic.feature_dim, continuous, cfg)
        self.log_alpha = nn.Parameter(torch.tensor(float(cfg.init_temperature)).log())
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else -continuous / 2

    def param_group(self, name: str) -> str:
        return "backbone" if ".encoder." in name else "head"

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def act(self, obs: dict[str, Any], deterministic: bool = False) -> torch.Tensor:
        f = self.critic.features(obs)
        action = self.actor.mode(f) if deterministic else self.actor(f)[0]
        if self.critic.gripper is None:
            return action
        index = self.critic.gripper(f).argmax(-1)
        if not deterministic and self.cfg.gripper_epsilon > 0:
            explore = torch.rand(index.shape, device=index.device) < self.cfg.gripper_epsilon
            index = torch.where(explore, torch.randint_like(index, len(GRIPPER_COMMANDS)), index)
        command = torch.tensor(GRIPPER_COMMANDS, device=f.device)[index]
        return torch.cat([action, command[:, None]], dim=-1)


# --- the losses ---------------------------------------------------------------------------
@torch.no_grad()
def next_features(agent: SACAgent, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of s' under the online critic (for the actor) and the target critic. A frozen
    encoder's tokens are computed (or read from the cache) once and go through both heads."""
    nxt, pixels = batch["next_obs"], agent.critic.pixels
    if pixels is None or not pixels.encoder.frozen:
        return agent.critic.features(nxt), agent.target_critic.features(nxt)
    tokens = pixels.tokens(nxt)
    return agent.critic.features(nxt, tokens), agent.target_critic.features(nxt, tokens)


def bootstrap(cfg: SACConfig, batch: dict[str, Any], q_next: torch.Tensor) -> torch.Tensor:
    """c r + gamma (1 - terminated) q_next: the one-step target every critic here regresses to."""
    return cfg.reward_scale * batch["reward"] + cfg.gamma * (1.0 - batch["terminated"].float()) * q_next


def target_subset(cfg: SACConfig, device: torch.device) -> torch.Tensor | None:
    """Z distinct critics for the target's min; None when Z = E (all of them, no gather)."""
    return torch.randperm(cfg.ensemble, device=device)[: cfg.subset] if cfg.subset < cfg.ensemble else None


def td_target(agent: SACAgent, batch: dict[str, Any], subset: torch.Tensor | None,
              features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """y = c r + gamma (1 - terminated) (min over ``subset`` of Q'(s', a') - alpha log pi(a'|s'))."""
    with torch.no_grad():
        next_f, target_f = features if features is not None else next_features(agent, batch)
        next_a, next_logp = agent.actor(next_f)
        q_next = agent.target_critic(target_f, next_a, members=subset).min(0).values
        if agent.cfg.backup_entropy:
            q_next = q_next - agent.alpha * next_logp
        return bootstrap(agent.cfg, batch, q_next)


def gripper_target(agent: SACAgent, batch: dict[str, Any],
                   features: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Double DQN: y = c r + gamma (1 - terminated) Q'_g(s', argmax_b Q_g(s', b))."""
    with torch.no_grad():
        next_f, target_f = features if features is not None else next_features(agent, batch)
        assert agent.critic.gripper is not None and agent.target_critic.gripper is not None
        best = agent.critic.gripper(next_f).argmax(-1, keepdim=True)
        q_next = agent.target_critic.gripper(target_f).gather(-1, best).squeeze(-1)
        return bootstrap(agent.cfg, batch, q_next)


def critic_loss(agent: SACAgent, batch: dict[str, Any]) -> torch.Tensor:
    """The ensemble's TD loss, plus the gripper critic's when there is one (one optimiser)."""
    cfg = agent.cfg
    subset = target_subset(cfg, batch["reward"].device)
    nxt = next_features(agent, batch)
    y = td_target(agent, batch, subset, nxt)
    features = agent.critic.features(batch["obs"])
    action = batch["action"]
    if agent.critic.gripper is not None:
        action, command = action[:, :-1], action[:, -1]
    q = agent.critic(features, action)  # (E, B)
    assert q.shape == (agent.cfg.ensemble, y.shape[0]), q.shape
    loss = ((q - y) ** 2).mean()
    if agent.critic.gripper is not None:
        q_g = agent.critic.gripper(features).gather(-1, gripper_index(command)[:, None]).squeeze(-1)
        loss = loss + ((q_g - gripper_target(agent, batch, nxt)) ** 2).mean()
    return loss


def actor_loss(agent: SACAgent, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():  # the encoder and its head learn from the critic only
        features = agent.critic.features(batch["obs"])
    a, logp = agent.actor(features)
    with frozen(agent.critic.q):  # gradients flow to the action only; no critic weight gradients to compute
        q = agent.critic(features, a).mean(0)
    return (agent.alpha.detach() * logp - q).mean(), logp.detach()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` need no gradient inside the block (restored after, even on error)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def temperature_loss(agent: SACAgent, logp: torch.Tensor) -> torch.Tensor:
    return -(agent.log_alpha * (logp + agent.target_entropy)).mean()


# --- the update ---------------------------------------------------------------------------
class SACLearner:
    """Optimisers and the update step; ``update(batches)`` takes ``actor_every`` minibatches."""

    def __init__(self, agent: SACAgent) -> None:
        cfg = agent.cfg
        self.agent = agent
        self.critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=cfg.lr)
        self.actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam([agent.log_alpha], lr=cfg.lr)
        # compiled once per learner; the first update pays the compile time (about 30 s on 2 CPU cores)
        self.critic_loss = torch.compile(critic_loss) if cfg.compile else critic_loss
        self.soft_update = SoftUpdate(agent.target_critic, agent.critic)
        self.env_steps = 0  # set by online recipes; SAC has no schedule that reads it
        # Called with the parameters about to be stepped, after each backward: data-parallel
        # learners average gradients here (runtime.distributed.average_gradients).
        self.grad_sync: Callable[[Iterable[nn.Parameter]], None] | None = None

    # What an update reads besides its batches; a data-parallel group sends these to every process.
    schedule_attrs = ("env_steps",)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_opt, "actor": self.actor_opt, "alpha": self.alpha_opt}

    def update(self, batches: list[dict[str, Any]], update_actor: bool = True) -> dict[str, torch.Tensor]:
        agent = self.agent
        sync = self.grad_sync or (lambda _params: None)
        for batch in batches:
            loss_q = self.critic_loss(agent, batch)
            self.critic_opt.zero_grad(set_to_none=True)
            loss_q.backward()
            sync(agent.critic.parameters())
            self.critic_opt.step()
            self.soft_update(agent.cfg.tau)
        info = {"critic_loss": loss_q.detach()}
        if update_actor:
            loss_pi, logp = actor_loss(agent, batches[-1])
            self.actor_opt.zero_grad(set_to_none=True)
            loss_pi.backward()
            sync(p for g in self.actor_opt.param_groups for p in g["params"])
            self.actor_opt.step()
            loss_alpha = temperature_loss(agent, logp)
            self.alpha_opt.zero_grad(set_to_none=True)
            loss_alpha.backward()
            sync(p for g in self.alpha_opt.param_groups for p in g["params"])
            self.alpha_opt.step()
            info.update(actor_loss=loss_pi.detach(), alpha=agent.alpha.detach(), entropy=-logp.mean())
        return info


class SoftUpdate:
    """target <- (1 - tau) target + tau source over the source's trainable parameters, in one
    fused call. The pairs are listed once: walking a critic that holds a frozen pretrained
    encoder costs more than the lerp, and the encoder's copy in the target equals it and stays so."""

    def __init__(self, target: nn.Module, source: nn.Module) -> None:
        pairs = [(t, s) for t, s in zip(target.parameters(), source.parameters(), strict=True) if s.requires_grad]
        self.target: list[torch.Tensor] = [t for t, _ in pairs]
        self.source: list[torch.Tensor] = [s for _, s in pairs]

    @torch.no_grad()
    def __call__(self, tau: float) -> None:
        torch._foreach_lerp_(self.target, self.source, tau)


def obs_to_torch(obs: dict[str, Any], device: torch.device, add_batch_dim: bool = False) -> dict[str, Any]:
    """An env observation (state, frames, cached tokens) -> the agent's input tensors on ``device``."""
    def t(x, dtype=None):
        x = torch.as_tensor(np.asarray(x, dtype), device=device)
        return x[None] if add_batch_dim else x

    out: dict[str, Any] = {"state": t(obs["state"], np.float32)}
    if "pixels" in obs:
        out["pixels"] = {c: t(v) for c, v in obs["pixels"].items()}
    if "features" in obs:  # a frozen encoder's tokens, already computed (EncodeFrames)
        out["features"] = {c: t(v) for c, v in obs["features"].items()}
    return out


def to_torch(sample: dict[str, Any], device: torch.device, augment: bool = False,
             gen: torch.Generator | None = None, feature_shift: int = 1) -> list[dict[str, Any]]:
    """A replay sample with leading (G, B) dims -> G minibatches of tensors on ``device``.
    With ``augment``, frames get DrQ's 4 px random shift and cached token grids a random shift
    of up to ``feature_shift`` cells (each image its own offset)."""
    def t(x):
        return torch.as_tensor(x, device=device)

    g = sample["action"].shape[0]
    out = []
    for i in range(g):
        obs = {"state": t(sample["state"][i])}
        nxt = {"state": t(sample["next_state"][i])}
        if sample.get("pixels"):
            obs["pixels"] = {c: torch.as_tensor(v[i]) for c, v in sample["pixels"].items()}
            nxt["pixels"] = {c: torch.as_tensor(v[i]) for c, v in sample["next_pixels"].items()}
            for o in (obs, nxt):
                o["pixels"] = {c: (random_shift(v, 4, gen) if augment else v).to(device) for c, v in o["pixels"].items()}
        if sample.get("features"):  # cached tokens (B, C, N), batch first as every batch tensor
            for o, key in ((obs, "features"), (nxt, "next_features")):
                tokens = {c: torch.as_tensor(v[i]) for c, v in sample[key].items()}
                if augment and feature_shift:
                    tokens = {c: random_grid_shift(v, feature_shift, gen) for c, v in tokens.items()}
                o["features"] = {c: v.to(device) for c, v in tokens.items()}
        batch = {"obs": obs, "next_obs": nxt, "action": t(sample["action"][i]), "reward": t(sample["reward"][i]),
                 "terminated": t(sample["terminated"][i])}
        for key in ("mc_return", "offline"):  # present when the buffer keeps returns / when mixed
            if key in sample:
                batch[key] = t(sample[key][i])
        out.append(batch)
    return out
