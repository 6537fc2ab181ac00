"""HIL-SERL: asynchronous actors and a SAC learner, human interventions, a learned reward.

    vlarl train hil-serl --env panda/pick-cube                 # pixels, simulated human
    vlarl train hil-serl --resume runs/hil-serl                # after a crash or Ctrl-C

The learner (this process) owns two replay buffers, as HIL-SERL does: the demo buffer
(``demos`` scripted demos recorded through the same wrappers, plus every intervened
segment) and the RL buffer (every transition). Each critic minibatch is half from each.
Actors step the env with the newest weights they have and ship whole episodes; the
learner (the off-policy runtime, runtime/offpolicy.py) trains as the data comes, never more
than ``sac.utd`` critic steps per env step received, one actor step every
``sac.actor_every`` critic steps, and publishes weights every ``weights_every`` updates.

Runtimes: ``inprocess`` (one process, actor and learner interleaved: for debugging and
deterministic tests), ``multiprocess`` (default: actor processes on this machine talking
over a local socket; no server to start) and ``ray`` (actors as Ray tasks on any node of a
cluster, connecting back to the learner's address).

The env stack an actor runs, outermost first: end-effector-relative frame -> reward
classifier -> intervention device -> the env. Evaluation runs the policy alone (no human)
and counts the env's own success, never the classifier's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from vlarl.algos.conrft import ConRFTAgent
from vlarl.algos.sac import SACAgent, SACConfig, SACLearner, obs_to_torch, to_torch
from vlarl.data.mixing import MixedReplay
from vlarl.data.replay import ReplayBuffer
from vlarl.envs.intervention import SimulatedHumanConfig
from vlarl.envs.spaces import env_dims
from vlarl.envs.wrappers import RewardShapingConfig, insert_innermost
from vlarl.errors import VlarlError
from vlarl.models.encoders import FrameEncoder
from vlarl.recipes.collect import EnvConfig
from vlarl.runtime import Run, load_config, seed_everything
from vlarl.runtime.actor import ActorParts, EpisodeStream
from vlarl.runtime.config import check_ranges, ranged
from vlarl.runtime.launcher import ActorLauncher
from vlarl.runtime.offpolicy import OffPolicyLoop, Schedule
from vlarl.runtime.secret import start_run_secret
from vlarl.runtime.sources import EpisodeSource, LocalSource, RemoteSource
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

    # What the runtime trains: the run's name, its actors' entry point and agent (ConRFT, on the
    # same runtime, subclasses the config for its own).
    name: ClassVar[str] = "hil-serl"
    actor_entry: ClassVar[str] = "vlarl.recipes.hil_serl:actor_parts"

    def make_agent(self, state_dim: int, action_dim: int, cameras: dict | None) -> Agent:
        return SACAgent(self.sac, state_dim, action_dim, cameras)

    @classmethod
    def upgrade(cls, values: dict[str, Any]) -> dict[str, Any]:
        """A config file of an older vlarl: ``updates_per_step`` (learner updates per env step,
        each ``sac.utd`` critic steps) became ``sac.utd`` critic steps per env step and
        ``sac.actor_every`` critic steps per actor step, the same schedule."""
        if "updates_per_step" not in values:
            return values
        values = dict(values)
        sac = dict(values.get("sac") or {})
        per_update = sac.get("utd", cls().sac.utd)
        sac.setdefault("actor_every", per_update)
        sac["utd"] = float(values.pop("updates_per_step")) * per_update
        values["sac"] = sac
        return values

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


def agent_for(cfg: HILSERLConfig, env: Any) -> Agent:
    state_dim, action_dim, cameras = env_dims(env)
    return cfg.make_agent(state_dim, action_dim, cameras)


def build_actor(cfg: HILSERLConfig, actor_id: int, agent: Agent | None = None) -> ActorParts:
    """An actor's env, policy and weight loader (its own agent copy unless ``agent`` is shared)."""
    seed = cfg.seed + 1000 * (actor_id + 1)
    env, device = make_env(cfg, seed)
    if agent is None:
        agent = agent_for(cfg, env)
    if agent.critic.pixels is not None and agent.critic.pixels.encoder.frozen:
        agent.critic.pixels.encoder.shared_tokens = True  # one encoding per frame for policy and classifier
    if (encoder := frame_encoder_of(agent)) is not None:  # the actor ships tokens the learner trains on
        from vlarl.envs.wrappers import EncodeFrames

        env = EncodeFrames(env, encoder, keep_frames=cfg.store_frames)
    torch_device = next(agent.parameters()).device

    def act(obs: dict[str, Any]) -> np.ndarray:
        return agent.act(obs_to_torch(obs, torch_device, add_batch_dim=True))[0].cpu().numpy()

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
def record_demos(cfg: HILSERLConfig, replay: MixedReplay, n: int,
                 frame_encoder: FrameEncoder | None = None) -> dict[str, float | None]:
    """``n`` scripted demos through the training wrappers (frame, classifier) into the demo buffer
    (with ``frame_encoder``, the tokens of their frames too, encoded once as recorded)."""
    from vlarl.envs.intervention import ExpertDevice, InterventionWrapper, expert_of

    seed = cfg.seed + 7
    env, _ = make_env(_without_human(cfg), seed, frame_encoder=frame_encoder)
    # the expert drives every step from just outside the base env, so frame and reward wrappers apply
    env = insert_innermost(env, lambda e: InterventionWrapper(e, ExpertDevice(expert_of(e), cfg.demo_noise, seed)))
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
        replay.add_demo(shipped[-1]["arrays"])
    env.close()
    return {"demos": n, "demo_success_rate": float(np.mean([ep["true_success"] for ep in shipped])) if n else None}


def _without_human(cfg: HILSERLConfig) -> HILSERLConfig:
    import dataclasses

    return dataclasses.replace(cfg, human="none")


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
            action = agent.act(obs_to_torch(obs, device, add_batch_dim=True), deterministic=True)[0].cpu().numpy()
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


def _schedule(cfg: HILSERLConfig) -> Schedule:
    """HIL-SERL's: learn as soon as the buffers can give a batch, ``sac.utd`` critic steps per env
    step at most, the curve from the untrained policy, the final evaluation on 50 episodes."""
    return Schedule(steps=cfg.steps, utd=cfg.sac.utd, actor_every=cfg.sac.critic_steps_per_actor_step(),
                    weights_every=cfg.weights_every, eval_every=cfg.eval_every, eval_at_start=cfg.eval_every > 0,
                    eval_episodes=cfg.eval_episodes, final_eval_episodes=cfg.final_eval_episodes,
                    eval_seed=10_000 + cfg.seed, final_eval_seed=20_000 + cfg.seed, save_every=cfg.save_every,
                    save_buffer=cfg.save_buffer, log_every=cfg.log_every)


class OnlineRun:
    """A HIL-SERL-style run opened and restored, its demos recorded: ``loop`` (the off-policy
    runtime) is ready for stages before the online one (ConRFT's offline stage), ``train``
    runs the online stage with the configured actors. ``done`` holds the results instead when
    there is nothing to train: a finished run, or a follower of a torchrun group."""

    def __init__(self, cfg: HILSERLConfig, resume: Run | None, progress: bool,
                 make_learner: Callable[[Agent, torch.Generator], Any], monte_carlo: bool = False,
                 keep_results: tuple[str, ...] = ()) -> None:
        from vlarl.runtime import distributed

        self.done: dict[str, Any] | None = None
        cfg, self.ctx = distributed.init_for(cfg, resume)  # under torchrun: one process per device
        # a finished run (final evaluation in results.json) is not started again: no actor, no evaluation
        if resume is not None and (done := resume.finished(cfg.steps, "final_success")) is not None:
            self.done = done if self.ctx.is_main else {"follower": True, "rank": self.ctx.rank}
            return
        cfg.check()
        distributed.require_divisible(cfg.sac.batch_size, self.ctx, "sac.batch_size")
        run, cfg, progress = distributed.start_run(cfg, resume, self.ctx, progress)
        self.cfg, self.run = cfg, run
        threads = cfg.learner_threads or max(1, (os.cpu_count() or 2) - (cfg.actors if cfg.runtime != "inprocess" else 0))
        torch.set_num_threads(max(1, threads // self.ctx.world_size))
        rng = seed_everything(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        device = self.ctx.device
        # Fail before anything starts if the device, the classifier or the env cannot be built.
        probe, _ = make_env(cfg, cfg.seed)
        self.agent = agent = agent_for(cfg, probe).to(device)
        state_dim, action_dim, cameras = env_dims(probe)
        encoder = frame_encoder_of(agent)
        tokens = encoder.shapes if encoder is not None else None
        frames = cameras if encoder is None or cfg.store_frames else None  # what episodes carry and buffers keep
        # actors' episodes are checked against this env before they touch a buffer
        self.episode_spec = EpisodeSpec(
            state_dim, action_dim, frames,
            int(getattr(probe.unwrapped, "episode_length", None) or cfg.env.episode_length or 10_000), features=tokens)
        self.obs_keys = observation_keys(state_dim, frames, tokens)
        probe.close()
        learner = make_learner(agent, gen)
        if not self.ctx.is_main:  # a follower: rank 0 serves the actors, holds the buffers and evaluates
            self.done = distributed.follow_updates(run, agent, learner, self.ctx)
            return
        mc_gamma = cfg.sac.gamma if monte_carlo else None  # Monte-Carlo returns kept (Cal-QL's floor)
        online, demos = (ReplayBuffer(cfg.buffer_size, state_dim, action_dim, frames, seed=cfg.seed + i,
                                      mc_gamma=mc_gamma, features=tokens) for i in (0, 1))
        replay = MixedReplay(online, demos, cfg.sac.batch_size, cfg.sac.offline_ratio, offline_grows=True)
        self.loop = OffPolicyLoop(
            run, cfg.name, agent, learner, replay, _schedule(cfg),
            lambda sample: to_torch(sample, device, cfg.sac.augment and cameras is not None, gen, cfg.sac.feature_shift),
            lambda n, seed, video: evaluate_policy(cfg, agent, n, seed, video=video), {"rng": rng, "gen": gen},
            log=lambda msg: tqdm.write(f"[learner] {msg}"), progress=progress,
            video=run.path / "final_policy.mp4" if cfg.video else None)
        resumed = self.loop.restore(keep_results)
        distributed.broadcast_module(agent, self.ctx)
        self.loop.learner = distributed.shard_learner(learner, self.ctx)  # under torchrun: each update over every process
        self.loop.counters.setdefault("demo_success_rate", None)
        if not resumed and cfg.demos:
            self.loop.counters.update(record_demos(cfg, replay, cfg.demos, encoder))
            self.loop.log(f"recorded {cfg.demos} demos (success {self.loop.counters['demo_success_rate']:.2f})")
        self.loop.start_clock()  # wall_clock_min: training, not the demos

    def source(self) -> EpisodeSource:
        """The configured actors: one env here (``inprocess``), or actor processes / Ray actors."""
        cfg, loop = self.cfg, self.loop
        if cfg.runtime == "inprocess":
            return LocalSource(build_actor(cfg, 0, self.agent), loop.replay, whole_episodes=True, state=loop.source_state)
        if cfg.runtime == "ray" and cfg.transport.host == "127.0.0.1" and cfg.ray_address:
            loop.log("runtime=ray with a cluster: set transport.host=0.0.0.0 so remote actors can connect")
        secret = start_run_secret(self.run.path)  # fresh at each start; actors read RUN/secret (0600)
        server = LearnerServer(cfg.transport, self.run.path, secret, self.episode_spec, max_actors=cfg.actors, log=loop.log)
        launcher = ActorLauncher(cfg.runtime, self.run.path, cfg.actor_entry, cfg.actors, cfg.respawn_actors,
                                 cfg.ray_address, loop.log, secret=secret)
        return RemoteSource(server, launcher, loop.replay, lambda: _acting_state(self.agent), loop.log,
                            stall_s=max(30.0, 6 * cfg.transport.timeout_s), address=_reachable(server))

    def train(self) -> dict[str, Any]:
        """The online stage to ``steps`` env steps, then the final figures, plot and results.json."""
        cfg, loop = self.cfg, self.loop
        try:
            results = loop.train(self.source())
            if self.ctx.enabled:  # every process must end with rank 0's weights
                results["replica_gap"] = loop.learner.replica_gap()
        except KeyboardInterrupt:
            self.run.close()
            raise
        finally:
            if self.ctx.enabled:  # the followers return
                loop.learner.stop()
        results.update(plot=str(self.run.path / f"{cfg.name.replace('-', '_')}.png"),
                       demo_success_rate=loop.counters["demo_success_rate"], runtime=cfg.runtime,
                       obs_keys=self.obs_keys)
        self.run.write_results(results)
        _plot(results, Path(results["plot"]))
        self.run.close()
        return results


def train_hil_serl(cfg: HILSERLConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    """Demos, then the online stage: SAC from the actors' episodes and the demo buffer 50/50."""
    run = OnlineRun(cfg or HILSERLConfig(), resume, progress, _sac_learner)
    return run.done if run.done is not None else run.train()


def _sac_learner(agent: Agent, _generator: torch.Generator) -> SACLearner:
    assert isinstance(agent, SACAgent)
    return SACLearner(agent)


def _reachable(server: LearnerServer) -> tuple[str, int]:
    """The learner's address as actors on other nodes must dial it."""
    if server.host in ("0.0.0.0", ""):
        import socket

        return socket.gethostbyname(socket.gethostname()), server.port
    return server.host, server.port


def _plot(results: dict[str, Any], path: Path) -> None:
    from vlarl.eval.plots import hil_serl_curves

    hil_serl_curves(results, path)
