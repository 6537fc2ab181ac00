"""HIL-SERL: asynchronous actors and a SAC learner, human interventions, a learned reward.

    vlarl train hil-serl --env panda/pick-cube                 # pixels, simulated human
    vlarl train hil-serl --resume runs/hil-serl                # after a crash or Ctrl-C

The learner (this process) owns two replay buffers, as HIL-SERL does: the demo buffer
(``demos`` scripted demos recorded through the same wrappers, plus every intervened
segment) and the RL buffer (every transition). Each critic minibatch is half from each.
Actors step the env with the newest weights they have and ship whole episodes; the
learner trains as the data comes, never more than ``updates_per_step`` updates per env
step received, and publishes weights every ``weights_every`` updates.

Runtimes: ``inprocess`` (one process, actor and learner interleaved: for debugging and
deterministic tests), ``multiprocess`` (default: actor processes on this machine talking
over a local socket; no server to start) and ``ray`` (actors as Ray tasks on any node of a
cluster, connecting back to the learner's address).

The env stack an actor runs, outermost first: end-effector-relative frame -> reward
classifier -> intervention device -> the env. Evaluation runs the policy alone (no human)
and counts the env's own success, never the classifier's.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from vlarl.algos.conrft import ConRFTAgent
from vlarl.algos.sac import SACAgent, SACConfig, SACLearner, to_torch
from vlarl.data.replay import ReplayBuffer, sample_mixed
from vlarl.envs.intervention import SimulatedHumanConfig
from vlarl.envs.spaces import env_dims
from vlarl.envs.wrappers import RewardShapingConfig
from vlarl.errors import VlarlError
from vlarl.models.encoders import FrameEncoder
from vlarl.recipes.collect import EnvConfig
from vlarl.recipes.rlpd import _obs_to_torch
from vlarl.runtime import Run, load_config, seed_everything
from vlarl.runtime.actor import ActorParts, EnvStepper, EpisodeStream
from vlarl.runtime.config import check_ranges, ranged
from vlarl.runtime.launcher import ActorLauncher
from vlarl.runtime.secret import start_run_secret
from vlarl.runtime.transport import EpisodeSpec, LearnerServer, TransportConfig, weights_spec

Agent = SACAgent | ConRFTAgent  # what make_agent builds: both act and share the critic's encoder

RUNTIMES = ("inprocess", "multiprocess", "ray")
HUMANS = ("sim", "keyboard", "gamepad", "none")
REWARDS = ("env", "classifier")


def _default_env() -> EnvConfig:
    # cameras: the env's own (panda: front and wrist), so ``--env`` alone switches envs
    return EnvConfig(name="panda/pick-cube", obs_mode="pixels", image_size=128, episode_length=100)


def _default_sac() -> SACConfig:
    # HIL-SERL's settings: critic-to-actor ratio 2, gamma 0.97, batch 256, two LayerNorm
    # critics (min over both), initial temperature 0.01 and no entropy term in the target (with
    # a 0/1 reward, temperature 1 would make entropy worth far more than success for thousands
    # of updates), LayerNorm in the policy too, pretrained frozen encoder, grasp critic. Its
    # image head: learned spatial embeddings over a 4 x 4 grid (HIL-SERL's ResNet-10 grid at
    # 128 px; here EfficientNet-Lite0's stride-16 grid pooled 2 x 2), tokens cached once per
    # frame; no augmentation (a shift of one cell of a 4 x 4 grid is a quarter of the image).
    return SACConfig(ensemble=2, subset=2, utd=2, batch_size=256, gamma=0.97, init_temperature=0.01,
                     backup_entropy=False, actor_layer_norm=True, encoder="efficientnet-lite0", gripper_critic=True,
                     gripper_epsilon=0.1, spatial_kernels=8, feature_pool=2, augment=False)


@dataclass
class HILSERLConfig:
    env: EnvConfig = field(default_factory=_default_env)
    sac: SACConfig = field(default_factory=_default_sac)
    demos: int = ranged(20, ge=0)  # scripted demos recorded through the same wrappers into the demo buffer
    demo_noise: float = ranged(0.1, ge=0)
    human: str = ranged("sim", choices=HUMANS)  # sim | keyboard | gamepad | none
    sim_human: SimulatedHumanConfig = field(default_factory=SimulatedHumanConfig)
    reward: str = ranged("env", choices=REWARDS)  # env | classifier (then ``classifier`` is a reward-classifier run)
    classifier: str | None = None
    classifier_threshold: float = ranged(0.5, ge=0, le=1)
    classifier_confirm_steps: int = ranged(3, ge=1)  # frames in a row the classifier must call success
    relative_frame: bool = True
    shaping: RewardShapingConfig | None = None  # replace the reward (ConRFT's: +10 success, -0.05 a step, ...)
    runtime: str = ranged("multiprocess", choices=RUNTIMES)  # inprocess | multiprocess | ray
    actors: int = ranged(1, ge=1)
    respawn_actors: bool = True  # start a new actor when one dies
    ray_address: str | None = None  # None: a local Ray instance; "auto": the running cluster
    transport: TransportConfig = field(default_factory=TransportConfig)
    control_hz: float | None = ranged(None, gt=0)  # pace actors like a real robot (HIL-SERL: 10 Hz)
    steps: int = ranged(30_000, ge=1)  # env steps received by the learner
    updates_per_step: float = ranged(1.0, gt=0)  # the learner never runs further ahead of the data than this
    weights_every: int = ranged(10, ge=1)  # learner updates between weight broadcasts
    buffer_size: int = ranged(200_000, ge=2)
    # With a frozen encoder (sac.cache_features) actors send and the buffers keep its tokens of
    # each frame, not the frame; true keeps the uint8 frames in the buffers as well.
    store_frames: bool = False
    save_buffer: bool = True
    eval_every: int = ranged(5_000, ge=0)  # env steps; 0: the final evaluation only
    eval_episodes: int = ranged(20, ge=1)
    final_eval_episodes: int = ranged(50, ge=1)
    video: bool = True  # film two episodes of the final evaluation
    save_every: int = ranged(2_500, ge=1)  # env steps
    log_every: int = ranged(100, ge=1)  # learner updates
    learner_threads: int = ranged(0, ge=0)  # 0: the cores left after one per actor (at least 1)
    seed: int = ranged(0, ge=0)
    run_dir: str = "runs/hil-serl"
    device: str = "auto"

    # What the runtime trains. A recipe on this runtime (ConRFT) subclasses the config and
    # overrides these: its agent, its learner, its actor entry point, an offline stage.
    name: ClassVar[str] = "hil-serl"
    actor_entry: ClassVar[str] = "vlarl.recipes.hil_serl:actor_parts"

    def make_agent(self, state_dim: int, action_dim: int, cameras: dict | None) -> Agent:
        return SACAgent(self.sac, state_dim, action_dim, cameras)

    def make_learner(self, agent: Agent, generator: torch.Generator) -> Any:
        assert isinstance(agent, SACAgent)
        return SACLearner(agent)

    def mc_gamma(self) -> float | None:
        """Discount of the Monte-Carlo returns the buffers keep (None: they keep none)."""
        return None

    def before_online(self, ctx: dict[str, Any]) -> None:
        """Runs once after the demos are recorded, before any actor step (ConRFT: offline stage)."""

    def check(self) -> None:
        """Every field's declared range, then the settings that depend on each other."""
        check_ranges(self, self.name)
        if self.reward == "classifier" and not self.classifier:
            raise VlarlError("hil-serl: reward=classifier needs classifier=<run dir of vlarl reward-classifier train>")


# --- the env stack ------------------------------------------------------------------------
def make_device(name: str, env, cfg: HILSERLConfig, seed: int):
    """The intervention device ``name`` for ``env`` (None for "none"); raises if unavailable."""
    if name == "none":
        return None
    if name == "sim":
        from vlarl.envs.intervention import SimulatedHuman, expert_of

        return SimulatedHuman(expert_of(env), cfg.sim_human, seed=seed)
    from vlarl.runtime.intervention import GamepadDevice, KeyboardDevice

    return KeyboardDevice() if name == "keyboard" else GamepadDevice()


def make_env(cfg: HILSERLConfig, seed: int, training: bool = True, frame_encoder: FrameEncoder | None = None):
    """The wrapped env and its intervention device (None when evaluating or no human). With
    ``frame_encoder`` every observation also carries its frames' tokens (``EncodeFrames``)."""
    from vlarl.envs import make
    from vlarl.envs.intervention import InterventionWrapper
    from vlarl.envs.wrappers import ClassifierReward, EncodeFrames, RelativeFrame, ShapedReward

    options = cfg.env.kwargs()
    use_classifier = training and cfg.reward == "classifier"
    if use_classifier:
        options["terminate_on_success"] = False  # the classifier decides; the true signal must not leak
    env = make(cfg.env.name, **options)
    device = make_device(cfg.human, env, cfg, seed) if training else None
    if device is not None:
        env = InterventionWrapper(env, device)
    if use_classifier:
        from vlarl.recipes.reward_classifier import check_fits, load_reward_classifier

        if not cfg.classifier:
            raise VlarlError("reward: classifier needs classifier: the run directory of a trained reward classifier")
        classifier = load_reward_classifier(cfg.classifier)
        check_fits(classifier, env, f"{cfg.name}: classifier={cfg.classifier}")
        classifier.encoder.shared_tokens = True  # the policy's frozen encoder reuses these tokens
        env = ClassifierReward(env, classifier.success_prob, cfg.classifier_threshold,
                               confirm_steps=cfg.classifier_confirm_steps)
    if training and cfg.shaping is not None:  # outside the classifier: shapes whichever success signal is used
        env = ShapedReward(env, cfg.shaping.success, cfg.shaping.step, cfg.shaping.gripper_toggle)
    if cfg.relative_frame:
        env = RelativeFrame(env)
    if frame_encoder is not None:  # outermost: the tokens of exactly the frames the policy sees
        env = EncodeFrames(env, frame_encoder, keep_frames=cfg.store_frames)
    return env, device


def _acting_state(agent: Agent) -> dict[str, torch.Tensor]:
    """What an actor needs: the actor, the gripper critic and the pixel head (not the ensemble,
    and not a frozen encoder: the actor builds the same pretrained one and it never changes)."""
    skip = ["target_critic.", "critic.q."]
    if agent.critic.pixels is not None and agent.critic.pixels.encoder.frozen:
        skip.append("critic.pixels.encoder.")
    return {k: v.detach().cpu().clone() for k, v in agent.state_dict().items() if not k.startswith(tuple(skip))}


def observation_keys(state_dim: int, frames: dict | None, tokens: dict | None) -> dict[str, list[int]]:
    """What the learner's actor and critic read, with sizes: the state, frames, cached tokens."""
    return {"state": [state_dim], **{f"pixels.{c}": list(s) for c, s in (frames or {}).items()},
            **{f"features.{c}": list(s) for c, s in (tokens or {}).items()}}


def frame_encoder_of(agent: Agent) -> FrameEncoder | None:
    """The agent's frozen encoder as a once-per-frame encoder (None: state only, or a trained encoder)."""
    return agent.critic.pixels.frame_encoder() if agent.critic.pixels is not None else None


def _agent_for(cfg: HILSERLConfig, env: Any) -> Agent:
    state_dim, action_dim, cameras = env_dims(env)
    return cfg.make_agent(state_dim, action_dim, cameras)


def build_actor(cfg: HILSERLConfig, actor_id: int, agent: Agent | None = None) -> ActorParts:
    """An actor's env, policy and weight loader (its own agent copy unless ``agent`` is shared)."""
    seed = cfg.seed + 1000 * (actor_id + 1)
    env, device = make_env(cfg, seed)
    if agent is None:
        agent = _agent_for(cfg, env)
    if agent.critic.pixels is not None and agent.critic.pixels.encoder.frozen:
        agent.critic.pixels.encoder.shared_tokens = True  # one encoding per frame for policy and classifier
    if (encoder := frame_encoder_of(agent)) is not None:  # the actor ships tokens the learner trains on
        from vlarl.envs.wrappers import EncodeFrames

        env = EncodeFrames(env, encoder, keep_frames=cfg.store_frames)
    torch_device = next(agent.parameters()).device

    def act(obs: dict[str, Any]) -> np.ndarray:
        return agent.act(_obs_to_torch(obs, torch_device, add_batch_dim=True))[0].cpu().numpy()

    def load(payload: dict[str, Any]) -> None:
        if payload.get("state_dict") is not None:
            agent.load_state_dict(payload["state_dict"], strict=False)
        if device is not None and hasattr(device, "set_progress"):
            device.set_progress(payload["env_steps"])

    return ActorParts(env=env, act=act, load=load, transport=cfg.transport, seed=seed, control_hz=cfg.control_hz,
                      weights_spec=weights_spec(_acting_state(agent)))


def actor_parts(run_dir: str, actor_id: int, config_cls: type[HILSERLConfig] | None = None) -> ActorParts:
    """Entry point of actor processes: the run's saved config -> the actor's parts."""
    cfg = load_config(config_cls or HILSERLConfig, Path(run_dir) / "config.yaml")
    seed_everything(cfg.seed + 1000 * (actor_id + 1))
    return build_actor(cfg, actor_id)


# --- the learner --------------------------------------------------------------------------
def intervened_segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of True steps."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def slice_episode(arrays: dict[str, np.ndarray], start: int, end: int) -> dict[str, np.ndarray]:
    """Steps [start, end) with their observations start..end (T + 1 rows), as an episode."""
    t = len(arrays["action"])
    return {k: (v[start:end + 1] if len(v) == t + 1 else v[start:end]) for k, v in arrays.items()}


class Buffers:
    """HIL-SERL's two buffers: every transition to ``online``; demos and interventions to ``demos``.
    ``cameras``: the frames they keep; ``features``: the cached tokens they keep."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int, cameras: dict | None, seed: int,
                 mc_gamma: float | None = None, features: dict | None = None) -> None:
        self.online = ReplayBuffer(capacity, state_dim, action_dim, cameras, seed=seed, mc_gamma=mc_gamma,
                                   features=features)
        self.demos = ReplayBuffer(capacity, state_dim, action_dim, cameras, seed=seed + 1, mc_gamma=mc_gamma,
                                  features=features)

    def add(self, arrays: dict[str, np.ndarray], intervened: np.ndarray, demo: bool = False) -> None:
        if demo:
            self.demos.add_episode(arrays)
            return
        self.online.add_episode(arrays)
        for start, end in intervened_segments(intervened):
            self.demos.add_episode(slice_episode(arrays, start, end))

    def state_dict(self) -> dict[str, Any]:
        return {"online": self.online.state_dict(), "demos": self.demos.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.online.load_state_dict(d["online"])
        self.demos.load_state_dict(d["demos"])


def record_demos(cfg: HILSERLConfig, buffers: Buffers, n: int,
                 frame_encoder: FrameEncoder | None = None) -> dict[str, float | None]:
    """``n`` scripted demos through the training wrappers (frame, classifier) into the demo buffer
    (with ``frame_encoder``, the tokens of their frames too, encoded once as recorded)."""
    from vlarl.envs.intervention import ExpertDevice, InterventionWrapper, expert_of

    seed = cfg.seed + 7
    env, _ = make_env(_without_human(cfg), seed, frame_encoder=frame_encoder)
    # the expert drives every step from just outside the base env, so frame and reward wrappers apply
    env = _insert_innermost(env, lambda e: InterventionWrapper(e, ExpertDevice(expert_of(e), cfg.demo_noise, seed)))
    shipped: list[dict[str, Any]] = []
    stream = EpisodeStream(shipped.append, actor_id=-1)
    action = np.zeros(env.action_space.shape, np.float32)  # ignored: the expert overrides it
    for i in range(n):
        obs, _ = env.reset(seed=cfg.seed + 100_000 + i)
        stream.start(obs)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(action)
            stream.add(action, reward, obs, terminated, truncated, info)
            done = terminated or truncated
        buffers.add(shipped[-1]["arrays"], shipped[-1]["intervened"], demo=True)
    env.close()
    return {"demos": n, "demo_success_rate": float(np.mean([ep["true_success"] for ep in shipped])) if n else None}


def _without_human(cfg: HILSERLConfig) -> HILSERLConfig:
    import dataclasses

    return dataclasses.replace(cfg, human="none")


def _insert_innermost(env, wrap):
    """Wrap the base env inside an existing wrapper stack."""
    import gymnasium as gym

    if not isinstance(env, gym.Wrapper):
        return wrap(env)
    outer = env
    while isinstance(outer.env, gym.Wrapper):
        outer = outer.env
    outer.env = wrap(outer.env)
    return env


@torch.no_grad()
def evaluate_policy(cfg: HILSERLConfig, agent: Agent, episodes: int, seed: int,
                    video: Path | None = None, video_episodes: int = 2) -> dict[str, Any]:
    """The policy alone (no human, no classifier): the env's own success over ``episodes``;
    the first ``video_episodes`` are filmed to ``video`` when given."""
    from vlarl.eval.stats import wilson_interval
    from vlarl.eval.video import write_video

    env, _ = make_env(cfg, seed, training=False)
    device = next(agent.parameters()).device
    successes, lengths, frames = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        filming = video is not None and i < video_episodes
        done, success, t = False, False, 0
        while not done:
            if filming:
                frames.append(env.render())
            action = agent.act(_obs_to_torch(obs, device, add_batch_dim=True), deterministic=True)[0].cpu().numpy()
            obs, _, terminated, truncated, info = env.step(action)
            success, t, done = success or info["is_success"], t + 1, terminated or truncated
        successes.append(success)
        lengths.append(t)
    env.close()
    k = int(sum(successes))
    out: dict[str, Any] = {"success": k / episodes, "ci95": wilson_interval(k, episodes),
                           "mean_length": float(np.mean(lengths)), "episodes": episodes}
    if frames and video is not None:
        out["video"] = str(write_video(frames, video))
    return out


def train_hil_serl(cfg: HILSERLConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    from vlarl.runtime import distributed

    cfg, ctx = distributed.init_for(cfg, resume)  # under torchrun: one process per device
    # a finished run (final evaluation in results.json) is not started again: no actor, no evaluation
    if resume is not None and (done := resume.finished(cfg.steps, "final_success")) is not None:
        return done if ctx.is_main else {"follower": True, "rank": ctx.rank}
    cfg.check()
    distributed.require_divisible(cfg.sac.batch_size, ctx, "sac.batch_size")
    run, cfg, progress = distributed.start_run(cfg, resume, ctx, progress)
    threads = cfg.learner_threads or max(1, (os.cpu_count() or 2) - (cfg.actors if cfg.runtime != "inprocess" else 0))
    torch.set_num_threads(max(1, threads // ctx.world_size))
    rng = seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = ctx.device
    events: list[str] = []

    def log(msg: str) -> None:
        events.append(msg)
        tqdm.write(f"[learner] {msg}")

    # Fail before anything starts if the device, the classifier or the env cannot be built.
    probe, _ = make_env(cfg, cfg.seed)
    agent = _agent_for(cfg, probe).to(device)
    state_dim, action_dim, cameras = env_dims(probe)
    # actors' episodes are checked against this env before they touch a buffer
    encoder = frame_encoder_of(agent)
    tokens = encoder.shapes if encoder is not None else None
    frames = cameras if encoder is None or cfg.store_frames else None  # what episodes carry and buffers keep
    episode_spec = EpisodeSpec(state_dim, action_dim, frames,
                               int(getattr(probe.unwrapped, "episode_length", None) or cfg.env.episode_length or 10_000),
                               features=tokens)
    probe.close()
    learner = cfg.make_learner(agent, gen)
    if not ctx.is_main:  # a follower: rank 0 serves the actors, holds the buffers and evaluates
        return distributed.follow_updates(run, agent, learner, ctx)
    buffers = Buffers(cfg.buffer_size, state_dim, action_dim, frames, cfg.seed, cfg.mc_gamma(), tokens)
    counters = run.restore({"agent": agent}, learner.optimizers(), {"rng": rng, "gen": gen}) or {}
    distributed.broadcast_module(agent, ctx)
    learner = distributed.shard_learner(learner, ctx)  # under torchrun: each update over every process
    if "buffers" in counters:
        buffers.load_state_dict(counters.pop("buffers"))
    actor_state = counters.pop("actor", None)  # the in-process actor's episode count and random streams
    c = {"env_steps": 0, "updates": 0, "episodes": 0, "intervened_steps": 0, "demo_success_rate": None,
         "wall_s": 0.0, **counters}  # wall_s: training time of earlier sessions of this run
    if not counters and cfg.demos:
        c.update(record_demos(cfg, buffers, cfg.demos, encoder))
        log(f"recorded {cfg.demos} demos (success {c['demo_success_rate']:.2f})")
    results: dict[str, Any] = {"evals": [], "episodes": []}
    if (run.path / "results.json").exists() and counters:
        old = json.loads((run.path / "results.json").read_text())
        results["evals"] = [e for e in old.get("evals", []) if e["step"] <= c["env_steps"]]
        results["episodes"] = [e for e in old.get("episodes", []) if e["step"] <= c["env_steps"]]
        results.update({k: v for k, v in old.items() if k.startswith("offline")})
    t_start = time.perf_counter()

    local: _InProcessActor | None = None

    def save() -> None:
        saved = {**c, "wall_s": c["wall_s"] + time.perf_counter() - t_start}
        if cfg.save_buffer:
            saved["buffers"] = buffers.state_dict()
        if local is not None:
            saved["actor"] = local.state_dict()
        run.save(c["env_steps"], {"agent": agent}, learner.optimizers(), saved, {"rng": rng, "gen": gen})
        run.write_results(results)

    cfg.before_online({"run": run, "agent": agent, "learner": learner, "buffers": buffers, "counters": c,
                       "results": results, "device": device, "generator": gen, "augment": cameras is not None,
                       "save": save, "log": log, "progress": progress})

    server = actors = local = None
    if cfg.runtime == "inprocess":
        local = _InProcessActor(cfg, agent, actor_state)
    else:
        if cfg.runtime == "ray" and cfg.transport.host == "127.0.0.1" and cfg.ray_address:
            log("runtime=ray with a cluster: set transport.host=0.0.0.0 so remote actors can connect")
        secret = start_run_secret(run.path)  # fresh at each start; actors read RUN/secret (0600)
        server = LearnerServer(cfg.transport, run.path, secret, episode_spec, max_actors=cfg.actors, log=log)
        actors = ActorLauncher(cfg.runtime, run.path, cfg.actor_entry, cfg.actors,
                               cfg.respawn_actors, cfg.ray_address, log, secret=secret)
        actors.ensure(_reachable(server))

    version = c["updates"]

    def publish() -> None:
        if local is not None:  # shares the learner's agent: only the human's progress to pass on
            local.parts.load({"state_dict": None, "env_steps": c["env_steps"]})
        else:
            assert server is not None
            server.publish(version, {"state_dict": _acting_state(agent), "env_steps": c["env_steps"]})

    publish()
    last_data = time.monotonic()
    next_eval = (c["env_steps"] // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else math.inf
    next_save = (c["env_steps"] // cfg.save_every + 1) * cfg.save_every
    bar = tqdm(total=cfg.steps, initial=c["env_steps"], desc=cfg.name, unit="step", disable=not progress)

    if cfg.eval_every and not results["evals"]:  # where the curve starts: the untrained policy
        results["evals"].append({"step": c["env_steps"], "updates": c["updates"],
                                 **evaluate_policy(cfg, agent, cfg.eval_episodes, 10_000 + cfg.seed)})
    # Ctrl-C sets a flag the loop checks between steps, instead of raising wherever the main
    # thread happens to be (inside a lock, a socket send or a checkpoint write), so the
    # shutdown below always starts from a known state.
    interrupted = threading.Event()
    previous_handler = _on_sigint(interrupted.set)
    try:
        while c["env_steps"] < cfg.steps:
            # in-process, the stop waits for the episode in progress to end, so the checkpoint is
            # one an uninterrupted run passes through and a resume continues it exactly
            if interrupted.is_set() and (local is None or local.between_episodes):
                raise KeyboardInterrupt
            if local is not None:
                local.step()
                incoming = local.take()
            else:
                assert server is not None and actors is not None
                incoming = [ep for _, ep in server.inbox.drain()]
                actors.watch()
            for ep in incoming:
                n = len(ep["arrays"]["action"])
                buffers.add(ep["arrays"], ep["intervened"])
                c["env_steps"] += n
                c["episodes"] += 1
                k = int(ep["intervened"].sum())
                c["intervened_steps"] += k
                row = {"step": c["env_steps"], "length": n, "success": ep["success"],
                       "true_success": ep["true_success"], "intervention_rate": k / n, "actor": ep["actor"]}
                results["episodes"].append(row)
                run.log(c["env_steps"], episode_success=float(ep["success"]), episode_true_success=float(ep["true_success"]),
                        intervention_rate=k / n, episode_length=n)
                bar.update(n)
                last_data = time.monotonic()
            # 50/50 once the demo buffer holds half a batch; online only when there are no demos
            # and no interventions yet (an online-only run never fills it)
            half = cfg.sac.batch_size // 2
            demos = buffers.demos if len(buffers.demos) >= half else None
            ready = len(buffers.online) >= (half if demos is not None else cfg.sac.batch_size)
            if ready and c["updates"] < cfg.updates_per_step * c["env_steps"]:
                sample = sample_mixed(buffers.online, demos, cfg.sac.batch_size, cfg.sac.utd,
                                      cfg.sac.offline_ratio if demos is not None else 0.0)
                learner.env_steps = c["env_steps"]  # schedules (ConRFT's beta) follow the env steps
                info = learner.update(to_torch(sample, device, cfg.sac.augment and cameras is not None, gen,
                                               cfg.sac.feature_shift))
                c["updates"] += 1
                if c["updates"] % cfg.weights_every == 0:
                    version = c["updates"]
                    publish()
                if c["updates"] % cfg.log_every == 0:
                    run.log(c["env_steps"], updates=c["updates"], **{k: float(v) for k, v in info.items()},
                            **_actor_scalars(server))
            elif server is not None:
                time.sleep(0.005)
                if time.monotonic() - last_data > max(30.0, 6 * cfg.transport.timeout_s):
                    log(f"no episode from any actor for {time.monotonic() - last_data:.0f} s "
                        f"(connected: {server.connected}); check the actor logs in {run.path / 'actors'}")
                    last_data = time.monotonic()
            if c["env_steps"] >= next_eval and c["env_steps"] < cfg.steps:
                results["evals"].append({"step": c["env_steps"], "updates": c["updates"],
                                         **evaluate_policy(cfg, agent, cfg.eval_episodes, 10_000 + cfg.seed)})
                run.log(c["env_steps"], eval_success=results["evals"][-1]["success"])
                bar.set_postfix(success=f"{results['evals'][-1]['success']:.2f}")
                next_eval += cfg.eval_every
            if c["env_steps"] >= next_save:
                save()
                next_save += cfg.save_every
        if ctx.enabled:  # every process must end with rank 0's weights
            results["replica_gap"] = learner.replica_gap()
    except KeyboardInterrupt:
        log("interrupted: saving a checkpoint and stopping the actors")
        save()
        _shutdown(server, actors)
        bar.close()
        run.close()
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        if ctx.enabled:  # the followers return
            learner.stop()
    wall = c["wall_s"] + time.perf_counter() - t_start  # across restarts
    actor_hz = _actor_scalars(server).get("actor_hz")
    _shutdown(server, actors)
    bar.close()
    save()
    final = evaluate_policy(cfg, agent, cfg.final_eval_episodes, 20_000 + cfg.seed,
                            video=run.path / "final_policy.mp4" if cfg.video else None)
    results["evals"].append({"step": c["env_steps"], "updates": c["updates"], **final})
    results.update(
        final_success=final["success"], final_ci95=final["ci95"], final_mean_length=final["mean_length"],
        video=final.get("video"), plot=str(run.path / f"{cfg.name.replace('-', '_')}.png"),
        env_steps=c["env_steps"], updates=c["updates"], num_episodes=c["episodes"],
        intervention_rate=c["intervened_steps"] / max(c["env_steps"], 1), wall_clock_min=wall / 60,
        actor_hz=actor_hz if actor_hz is not None else (local.hz if local is not None else None),
        dropped_episodes=(server.inbox.dropped if server else 0), demo_success_rate=c["demo_success_rate"],
        runtime=cfg.runtime, resumed_from=run.resumed_step, events=events[-50:],
        obs_keys=observation_keys(state_dim, frames, tokens), bytes_per_transition=buffers.online.bytes_per_frame,
    )
    run.write_results(results)
    _plot(results, Path(results["plot"]))
    run.close()
    return results


def _on_sigint(callback):
    """Call ``callback`` on SIGINT (main thread only); returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda *_: callback())


def _actor_scalars(server: LearnerServer | None) -> dict[str, float]:
    if server is None or not server.actor_stats:
        return {}
    fresh = [s for s in list(server.actor_stats.values()) if "hz" in s and time.time() - s["received"] < 10]
    if not fresh:
        return {}
    return {"actor_hz": float(np.mean([s["hz"] for s in fresh])),
            "actor_dropped": float(sum(s["dropped"] for s in fresh)),
            "actors_connected": float(len(server.connected))}


def _reachable(server: LearnerServer) -> tuple[str, int]:
    """The learner's address as actors on other nodes must dial it."""
    if server.host in ("0.0.0.0", ""):
        import socket

        return socket.gethostbyname(socket.gethostname()), server.port
    return server.host, server.port


def _shutdown(server: LearnerServer | None, actors: ActorLauncher | None) -> None:
    if server is None:
        return
    server.stop_actors()
    if actors is not None:
        actors.stop()
    server.close()


class _InProcessActor:
    """Actor and learner in one process, interleaved one env step per loop (debugging, tests)."""

    def __init__(self, cfg: HILSERLConfig, agent: Agent, state: dict[str, Any] | None = None) -> None:
        self.parts = build_actor(cfg, 0, agent)
        self._out: list[dict[str, Any]] = []
        self.stepper = EnvStepper(self.parts, self._out.append, 0)
        self._t0 = time.perf_counter()
        self.between_episodes = True  # no step of the current episode taken yet
        if state is not None:
            self.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs to go on as if never stopped, saved between episodes (where the
        learner checkpoints): the episode count (the next reset's seed) and the random streams
        of the env's intervention devices (the simulated human's tremor)."""
        return {"episodes": self.stepper.episodes, "rngs": [g.bit_generator.state for g in self._generators()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at episode ``state["episodes"]``; an episode cut short by the stop starts over."""
        generators = self._generators()
        if len(generators) == len(state["rngs"]):  # else the run was resumed with other devices
            for gen, saved in zip(generators, state["rngs"]):
                gen.bit_generator.state = saved
        st = self.stepper
        st.episodes = state["episodes"]
        st.obs, _ = st.parts.env.reset(seed=st.parts.seed + st.episodes)
        st.stream.start(st.obs)

    def _generators(self) -> list[np.random.Generator]:
        out, env = [], self.parts.env
        while env is not None:  # the wrapper chain, outermost first
            rng = getattr(getattr(env, "device", None), "rng", None)
            if isinstance(rng, np.random.Generator):
                out.append(rng)
            env = getattr(env, "env", None)
        return out

    def step(self) -> None:
        episodes = self.stepper.episodes
        self.stepper.step()
        self.between_episodes = self.stepper.episodes != episodes

    def take(self) -> list[dict[str, Any]]:
        out, self._out[:] = list(self._out), []
        return out

    @property
    def hz(self) -> float:
        return self.stepper.steps / max(time.perf_counter() - self._t0, 1e-9)


def _plot(results: dict[str, Any], path: Path) -> None:
    from vlarl.eval.plots import hil_serl_curves

    hil_serl_curves(results, path)
