"""ASAP: align the simulator to the "real" robot with a delta action model, then fine-tune.

The real robot is a physics twin of ``arm/track`` (``twin``: actuator gain, mass, damping,
friction, action delay). Only two stages touch it, as only they would touch hardware:
``collect`` (real rollouts) and ``evaluate`` (deployment). Nothing that learns reads it.

    pretrain   asymmetric actor-critic PPO in the nominal sim (actor: proprio, phase and last
               command; critic: also the reference and global positions)
    collect    the pretrained policy on the twin: measured joint states, commanded actions
    delta      pi_delta trained by PPO with the recorded actions replayed open loop (algos/asap.py)
    sysid      the twin's physical factors fitted to the same recordings (baseline)
    dynamics   a residual next-state model fitted to the same recordings (baseline)
    finetune   the pretrained policy fine-tuned by PPO, the same budget each, in: the nominal
               sim (vanilla), the SysID sim, the sim + residual (delta_dynamics), the sim with
               pi_delta in the loop (asap)
    evaluate   each fine-tuned policy deployed on the twin without any model in the loop:
               closed-loop tracking errors; plus the open-loop replay errors of each aligned
               simulator on held-out recordings

``stage`` runs one stage alone (its inputs must exist in the run) or ``all``; a finished
stage is skipped, so ``--resume`` continues where a run stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from tqdm import tqdm

from vlarl.algos.asap import (
    DELTA_OBS_DIM,
    DELTA_PRIVILEGED_DIM,
    SYSID_PARAMS,
    OpenLoopReplay,
    Recordings,
    ResidualDynamics,
    delta_obs,
    fit_residual_dynamics,
    ideal_gain_delta,
    replay_errors,
    residual_dataset,
    start_replay,
    sysid_search,
    twin_fields,
)
from vlarl.algos.asymmetric_ppo import AsymmetricActorCritic, OnPolicyConfig, train_ppo
from vlarl.algos.ppo import PPOConfig
from vlarl.envs.arm import CONTROL_DT, PRIVILEGED_DIM, _fk
from vlarl.envs.twin import TwinConfig
from vlarl.errors import CheckpointError, VlarlError
from vlarl.fileio import atomic_write_text
from vlarl.runtime import Run, load_checkpoint, seed_everything
from vlarl.runtime.config import check_ranges, ranged

STAGES = ("pretrain", "collect", "delta", "sysid", "dynamics", "finetune", "evaluate")
VARIANTS = ("vanilla", "sysid", "delta_dynamics", "asap")
POLICY_OBS_DIM = 13  # arm state (10) + last command (3)
REPLAY_SIM: dict[str, Any] = {"max_joint_error": 1e9}  # replays and deployments run to the end, however far off


def _pretrain_defaults() -> OnPolicyConfig:
    return OnPolicyConfig(steps=800_000, ppo=PPOConfig(lr=1e-3, epochs=5, minibatch_size=512, target_kl=0.05))


def _finetune_defaults() -> OnPolicyConfig:
    return OnPolicyConfig(steps=200_000, ppo=PPOConfig(lr=3e-4, epochs=5, minibatch_size=512, target_kl=0.02))


def _delta_defaults() -> OnPolicyConfig:
    return OnPolicyConfig(steps=1_000_000, rollout=64, ppo=PPOConfig(lr=1e-3, epochs=5, minibatch_size=512,
                                                                    gamma=0.9, target_kl=0.05))


@dataclass
class DeltaConfig:
    train: OnPolicyConfig = field(default_factory=_delta_defaults)
    horizon: int = ranged(20, ge=1)  # replayed steps per window
    action_penalty: float = ranged(0.1, ge=0)  # w in reward = tracking - w |delta|
    sigma_q: float = ranged(0.01, gt=0)  # rad^2
    sigma_qd: float = ranged(1.0, gt=0)  # (rad/s)^2
    init_log_std: float = ranged(-2.0)


@dataclass
class SysIDConfig:
    params: list[str] = ranged(  # noqa: RUF009 -- ranged makes a field
        default_factory=lambda: ["mass", "friction", "damping", "actuator_gain"], choices=SYSID_PARAMS)
    iterations: int = ranged(6, ge=1)
    population: int = ranged(20, ge=1)
    elite: int = ranged(5, ge=1)  # at most population


@dataclass
class DynamicsConfig:
    steps: int = ranged(3000, ge=1)
    hidden: int = ranged(128, ge=1)
    lr: float = ranged(1e-3, gt=0)


def _default_twin() -> dict[str, Any]:
    return {"actuator_gain": 0.65, "mass": 1.2, "damping": 1.5, "action_delay": 1}


@dataclass
class ASAPConfig:
    env: dict[str, Any] = field(default_factory=dict)  # arm/track options (motion_seed, episode_length, ...)
    twin: dict[str, Any] = field(default_factory=_default_twin)  # the "real robot": collect and evaluate only
    pretrain: OnPolicyConfig = field(default_factory=_pretrain_defaults)
    init_log_std: float = ranged(-1.0)
    collect_episodes: int = ranged(24, ge=2)
    holdout_episodes: int = ranged(4, ge=1)  # of those, kept out of every fit, for the open-loop replay errors
    # Gaussian noise on the real rollouts' actions: the models fitted to them must cover the
    # actions a policy tries while it is fine-tuned (finetune_log_std)
    collect_noise: float = ranged(0.1, ge=0)
    delta: DeltaConfig = field(default_factory=DeltaConfig)
    sysid: SysIDConfig = field(default_factory=SysIDConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    finetune: OnPolicyConfig = field(default_factory=_finetune_defaults)
    finetune_log_std: float = ranged(-3.0)  # exploration (std 0.05) while fine-tuning a tracking policy
    variants: list[str] = ranged(  # noqa: RUF009 -- ranged makes a field
        default_factory=lambda: list(VARIANTS), choices=VARIANTS)
    eval_episodes: int = ranged(10, ge=1)
    torch_threads: int = ranged(1, ge=1)  # these small networks run fastest on one thread; more contend with the envs
    stage: str = ranged("all", choices=("all", *STAGES))
    seed: int = ranged(0, ge=0)
    run_dir: str = "runs/asap"


def _check(cfg: ASAPConfig) -> None:
    check_ranges(cfg, "asap")
    if cfg.sysid.elite > cfg.sysid.population:
        raise VlarlError(f"sysid.elite ({cfg.sysid.elite}) must be at most sysid.population ({cfg.sysid.population})")
    if not 0 < cfg.holdout_episodes < cfg.collect_episodes:
        raise VlarlError(f"holdout_episodes must be in [1, collect_episodes - 1], got {cfg.holdout_episodes} "
                         f"of {cfg.collect_episodes}")
    TwinConfig.from_dict(cfg.twin)
    from vlarl.envs import make

    make("arm/track", **cfg.env).close()  # a bad env option is named now, not after pretraining


# --- environments -----------------------------------------------------------------------
def policy_env(cfg: ASAPConfig, twin: TwinConfig | dict | None = None, delta: Any = None,
               residual: ResidualDynamics | None = None, **options: Any):
    """The arm as a policy sees it (last command appended), optionally a twin, with
    ``delta(state, prev, a)`` in the loop, or with a residual dynamics model."""
    from vlarl.envs import make
    from vlarl.envs.arm import arm_env
    from vlarl.envs.wrappers import DeltaAction, LastActionObs

    env = make("arm/track", **{**cfg.env, **options}, twin=twin)
    if residual is not None:
        arm_env(env).dynamics_residual = residual.predict
    if delta is not None:
        env = DeltaAction(env, delta)
    return LastActionObs(env)


def replay_sim(cfg: ASAPConfig, twin: TwinConfig | None = None):
    from vlarl.envs import make

    return make("arm/track", **{**cfg.env, **REPLAY_SIM}, twin=twin)


def new_policy(cfg: ASAPConfig, log_std: float) -> AsymmetricActorCritic:
    return AsymmetricActorCritic(POLICY_OBS_DIM, PRIVILEGED_DIM, 3, cfg.pretrain.hidden, log_std)


def delta_model(cfg: ASAPConfig) -> AsymmetricActorCritic:
    return AsymmetricActorCritic(DELTA_OBS_DIM, DELTA_PRIVILEGED_DIM, 3, cfg.delta.train.hidden, cfg.delta.init_log_std)


def delta_fn(model: AsymmetricActorCritic):
    """pi_delta's mean as a ``delta(state, prev, action)`` callable."""
    return lambda state, prev, action: model.act(delta_obs(state, prev, action))


# --- a PPO sub-run ----------------------------------------------------------------------
def ppo_stage(path: Path, model: AsymmetricActorCritic, make_envs: Any, cfg: OnPolicyConfig, seed: int,
              init: Path | None = None, init_log_std: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``model`` by PPO in a sub-run at ``path`` (skipped when finished, resumed from its
    checkpoint otherwise); ``init`` starts it from another sub-run's weights, with the
    exploration ``init_log_std``. ``model`` holds the final weights on return."""
    done = path / "results.json"
    if done.exists():
        load_checkpoint(path / "checkpoints", {"model": model}, restore_rng=False)
        return json.loads(done.read_text())
    # Reopening drops the scalars logged after the last checkpoint: they will be logged again.
    run = (Run.resume(path, OnPolicyConfig, config=cfg) if (path / "config.yaml").exists()
           else Run.create(path.parent, path.name, cfg))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.ppo.lr, eps=1e-5)
    counters = run.restore({"model": model}, {"opt": opt})
    if counters is None and init is not None:
        load_checkpoint(init / "checkpoints", {"model": model}, restore_rng=False)
        if init_log_std is not None:
            model.log_std.data.fill_(init_log_std)
    bar = tqdm(total=cfg.steps, initial=(counters or {}).get("env_steps", 0), desc=path.name, unit="step",
               disable=not progress)
    envs = make_envs()
    try:
        out = train_ppo(model, envs, cfg, seed, log=run.log, counters=counters, opt=opt, progress=bar.update,
                        checkpoint=lambda _u, c: run.save(c["env_steps"], {"model": model}, {"opt": opt}, counters=c))
        run.write_results(out)
    finally:
        bar.close()
        run.close()
        for env in envs:
            env.close()
    return out


# --- stages -----------------------------------------------------------------------------
def _need(path: Path, stage: str, producer: str) -> Path:
    if not path.exists():
        raise VlarlError(f"stage {stage} needs {path}: run stage {producer} first (or stage=all)")
    return path


def pretrain(cfg: ASAPConfig, root: Path, progress: bool = True) -> AsymmetricActorCritic:
    policy = new_policy(cfg, cfg.init_log_std)
    ppo_stage(root / "pretrain", policy, lambda: [policy_env(cfg) for _ in range(cfg.pretrain.envs)],
              cfg.pretrain, cfg.seed, progress=progress)
    return policy


def load_policy(cfg: ASAPConfig, path: Path, stage: str) -> AsymmetricActorCritic:
    policy = new_policy(cfg, cfg.init_log_std)
    load_checkpoint(_need(path / "results.json", stage, path.name).parent / "checkpoints", {"model": policy},
                    restore_rng=False)
    return policy


def rollout(policy: AsymmetricActorCritic, env: Any, seed: int, noise: float = 0.0,
            rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """One full episode; the measured joint states and the commanded actions."""
    obs, _ = env.reset(seed=seed)
    data = env.unwrapped.mj_data
    qpos, qvel, actions = [data.qpos.copy()], [data.qvel.copy()], []
    done = False
    while not done:
        a = policy.act(obs["state"])
        if noise > 0:
            a = a + (rng or np.random.default_rng()).normal(0.0, noise, a.shape)
        a = np.clip(a, -1.0, 1.0).astype(np.float32)
        obs, _, term, trunc, _ = env.step(a)
        done = term or trunc
        actions.append(a)
        qpos.append(data.qpos.copy())
        qvel.append(data.qvel.copy())
    return {"qpos": np.stack(qpos), "qvel": np.stack(qvel), "actions": np.stack(actions)}


def collect(cfg: ASAPConfig, root: Path, policy: AsymmetricActorCritic) -> tuple[Recordings, Recordings]:
    """Real rollouts on the twin: (fitting set, held-out set)."""
    train_path, hold_path = root / "real" / "train.npz", root / "real" / "holdout.npz"
    if not hold_path.exists():
        env = policy_env(cfg, twin=TwinConfig.from_dict(cfg.twin), **REPLAY_SIM)
        rng = np.random.default_rng(cfg.seed + 1)
        try:
            eps = [rollout(policy, env, 20_000 + cfg.seed * 1000 + i, cfg.collect_noise, rng)
                   for i in range(cfg.collect_episodes)]
        finally:
            env.close()
        rec = Recordings(*(np.stack([ep[k] for ep in eps]) for k in ("qpos", "qvel", "actions")))
        train_path.parent.mkdir(parents=True, exist_ok=True)
        n = cfg.collect_episodes - cfg.holdout_episodes
        rec.subset(slice(0, n)).save(train_path)
        rec.subset(slice(n, None)).save(hold_path)
    return Recordings.load(train_path), Recordings.load(hold_path)


def load_recordings(root: Path, stage: str) -> tuple[Recordings, Recordings]:
    return (Recordings.load(_need(root / "real" / "train.npz", stage, "collect")),
            Recordings.load(_need(root / "real" / "holdout.npz", stage, "collect")))


def train_delta(cfg: ASAPConfig, root: Path, rec: Recordings, progress: bool = True) -> AsymmetricActorCritic:
    model = delta_model(cfg)
    d = cfg.delta
    make_envs = lambda: [OpenLoopReplay(replay_sim(cfg), rec, d.horizon, d.action_penalty, d.sigma_q, d.sigma_qd)
                         for _ in range(d.train.envs)]
    ppo_stage(root / "delta", model, make_envs, d.train, cfg.seed + 2, progress=progress)
    return model


def load_delta(cfg: ASAPConfig, root: Path, stage: str) -> AsymmetricActorCritic:
    model = delta_model(cfg)
    load_checkpoint(_need(root / "delta" / "results.json", stage, "delta").parent / "checkpoints", {"model": model},
                    restore_rng=False)
    return model


def fit_sysid(cfg: ASAPConfig, root: Path, rec: Recordings) -> dict[str, Any]:
    path = root / "sysid.json"
    if not path.exists():
        s = cfg.sysid
        out = sysid_search(lambda twin: replay_sim(cfg, twin), rec, cfg.delta.horizon, tuple(s.params),
                           s.iterations, s.population, s.elite, seed=cfg.seed + 3)
        atomic_write_text(path, json.dumps(out, indent=2))
    return json.loads(path.read_text())


def fit_dynamics(cfg: ASAPConfig, root: Path, rec: Recordings) -> ResidualDynamics:
    path = root / "dynamics" / "model.safetensors"
    if not path.exists():
        if path.with_name("model.pt").exists():  # an older vlarl's pickle: not loaded, fitted anew beside it
            print(f"asap: {path.with_name('model.pt')} is a pickle (torch.save), which vlarl no longer loads; "
                  f"fitting the dynamics model again into {path.name}", flush=True)
        sim = replay_sim(cfg)
        try:
            x, y = residual_dataset(sim, rec)
        finally:
            sim.close()
        model, info = fit_residual_dynamics(x, y, cfg.dynamics.steps, hidden=cfg.dynamics.hidden, lr=cfg.dynamics.lr,
                                            seed=cfg.seed + 4)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path.parent / "fit.json", json.dumps({**info, "samples": len(x)}, indent=2))
        tmp = path.with_suffix(".tmp")
        save_model(model, str(tmp))
        tmp.replace(path)
    return load_dynamics(cfg, root, "dynamics")


def load_dynamics(cfg: ASAPConfig, root: Path, stage: str) -> ResidualDynamics:
    model = ResidualDynamics(cfg.dynamics.hidden)
    path = _need(root / "dynamics" / "model.safetensors", stage, "dynamics")
    try:
        load_model(model, str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:  # a malformed file, a shape/name mismatch
        raise CheckpointError(f"{path}: cannot load the dynamics model ({type(err).__name__}: {err})") from None
    return model


def finetune(cfg: ASAPConfig, root: Path, variant: str, progress: bool = True) -> AsymmetricActorCritic:
    """Fine-tune the pretrained policy in ``variant``'s simulator (its aligned model loaded
    from the run)."""
    options: dict[str, Any] = {}
    if variant == "sysid":
        fitted = json.loads(_need(root / "sysid.json", "finetune", "sysid").read_text())["twin"]
        options["twin"] = TwinConfig(**twin_fields(fitted))
    elif variant == "delta_dynamics":
        options["residual"] = load_dynamics(cfg, root, "finetune")
    elif variant == "asap":
        options["delta"] = delta_fn(load_delta(cfg, root, "finetune"))
    policy = new_policy(cfg, cfg.finetune_log_std)
    ppo_stage(root / "finetune" / variant, policy, lambda: [policy_env(cfg, **options) for _ in range(cfg.finetune.envs)],
              cfg.finetune, cfg.seed + 5, init=_need(root / "pretrain" / "results.json", "finetune", "pretrain").parent,
              init_log_std=cfg.finetune_log_std, progress=progress)
    return policy


def tracking_errors(policy: AsymmetricActorCritic, env: Any, episodes: int, seed: int) -> dict[str, float]:
    """Closed-loop tracking on ``env``: mean end-effector error (m), joint position (rad),
    velocity (rad/s) and acceleration (rad/s^2) errors against the reference, per step."""
    base = env.unwrapped
    ee, pos, vel, acc = [], [], [], []
    for i in range(episodes):
        ep = rollout(policy, env, seed + i)
        q, qd = ep["qpos"], ep["qvel"]
        steps = np.arange(len(q))
        q_ref, qd_ref = base._q_ref[steps], base._qd_ref[steps]
        ee += [np.linalg.norm(_fk(a) - _fk(b)) for a, b in zip(q[1:], q_ref[1:])]
        pos += list(np.linalg.norm(q[1:] - q_ref[1:], axis=-1))
        vel += list(np.linalg.norm(qd[1:] - qd_ref[1:], axis=-1))
        acc += list(np.linalg.norm(np.diff(qd, axis=0) / CONTROL_DT - np.diff(qd_ref, axis=0) / CONTROL_DT, axis=-1))
    return {"ee_pos_error": float(np.mean(ee)), "joint_pos_error": float(np.mean(pos)),
            "joint_vel_error": float(np.mean(vel)), "joint_acc_error": float(np.mean(acc))}


def evaluate(cfg: ASAPConfig, root: Path, variants: list[str]) -> dict[str, Any]:
    twin = TwinConfig.from_dict(cfg.twin)
    seed = 50_000 + cfg.seed * 1000
    closed: dict[str, dict[str, dict[str, float]]] = {}
    for variant in ["pretrained", *variants]:
        path = root / ("pretrain" if variant == "pretrained" else f"finetune/{variant}")
        policy = load_policy(cfg, path, "evaluate")
        for where, t in (("twin", twin), ("sim", None)):
            env = policy_env(cfg, twin=t, **REPLAY_SIM)
            try:
                closed.setdefault(where, {})[variant] = tracking_errors(policy, env, cfg.eval_episodes, seed)
            finally:
                env.close()
    _, holdout = load_recordings(root, "evaluate")
    open_loop: dict[str, dict[str, float]] = {}
    models: dict[str, tuple[Any, Any]] = {"nominal": (None, None)}
    if (root / "sysid.json").exists():
        models["sysid"] = (TwinConfig(**twin_fields(json.loads((root / "sysid.json").read_text())["twin"])), None)
    if (root / "dynamics" / "model.safetensors").exists():
        models["delta_dynamics"] = (None, load_dynamics(cfg, root, "evaluate"))
    if (root / "delta" / "results.json").exists():
        models["asap"] = (None, delta_fn(load_delta(cfg, root, "evaluate")))
    for name, (t, extra) in models.items():
        sim = replay_sim(cfg, t)
        try:
            if isinstance(extra, ResidualDynamics):
                sim.unwrapped.dynamics_residual = extra.predict
                open_loop[name] = replay_errors(sim, holdout, cfg.delta.horizon)
            else:
                open_loop[name] = replay_errors(sim, holdout, cfg.delta.horizon, delta=extra)
        finally:
            sim.close()
    twin_rows = closed["twin"]
    base_err = twin_rows.get("vanilla", twin_rows["pretrained"])["ee_pos_error"]
    return {
        "closed_loop_pos_error": {v: twin_rows[v]["ee_pos_error"] for v in variants},
        "closed_loop": twin_rows,
        "closed_loop_sim": closed["sim"],
        "open_loop_replay": open_loop,
        "reduction_vs_vanilla": {v: 1 - twin_rows[v]["ee_pos_error"] / base_err for v in variants},
    }


def gain_only(twin: dict[str, Any]) -> bool:
    """Whether the twin differs from the sim in its actuator gain alone (the analytic case)."""
    t = TwinConfig.from_dict(twin)
    return t.actuator_gain != 1.0 and t == TwinConfig(actuator_gain=t.actuator_gain, seed=t.seed)


def gain_check(cfg: ASAPConfig, root: Path, model: AsymmetricActorCritic, rec: Recordings) -> dict[str, Any]:
    """For a twin that only scales the actuator gains: learned vs closed-form delta on the
    recorded states, and the gap |learned - ideal| / |ideal| (means over steps and joints)."""
    gain = float(cfg.twin.get("actuator_gain", 1.0))
    learned, ideal = [], []
    sim = replay_sim(cfg)
    try:
        for e in range(rec.episodes):
            for t in range(rec.length):
                state = start_replay(sim, rec, e, t)
                a = rec.actions[e, t]
                learned.append(model.act(delta_obs(state, rec.prev_action(e, t), a)))
                ideal.append(ideal_gain_delta(state, a, gain))
    finally:
        sim.close()
    learned_a, ideal_a = np.stack(learned), np.stack(ideal)
    gap = np.abs(learned_a - ideal_a).mean() / np.abs(ideal_a).mean()
    corr = float(np.corrcoef(learned_a.ravel(), ideal_a.ravel())[0, 1])
    return {"actuator_gain": gain, "relative_gap": float(gap), "correlation": corr,
            "mean_abs_ideal": float(np.abs(ideal_a).mean()), "mean_abs_learned": float(np.abs(learned_a).mean())}


# --- the recipe -------------------------------------------------------------------------
def train_asap(cfg: ASAPConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    given = resume.config if resume is not None else cfg
    if given is not None:
        _check(given)
    run, cfg = Run.start(cfg, resume, exist_ok=True)
    seed_everything(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)
    root, t0 = run.path, time.perf_counter()
    todo = STAGES if cfg.stage == "all" else (cfg.stage,)
    results: dict[str, Any] = {"stages": list(todo)}
    try:
        if "pretrain" in todo:
            pretrain(cfg, root, progress)
        if "collect" in todo:
            collect(cfg, root, load_policy(cfg, root / "pretrain", "collect"))
        if any(s in todo for s in ("delta", "sysid", "dynamics")):
            rec, _ = load_recordings(root, todo[0])
            if "delta" in todo:
                model = train_delta(cfg, root, rec, progress)
                if gain_only(cfg.twin):
                    results["gain_check"] = gain_check(cfg, root, model, rec)
                    atomic_write_text(root / "delta" / "gain_check.json", json.dumps(results["gain_check"], indent=2))
            if "sysid" in todo and "sysid" in cfg.variants:
                results["sysid"] = fit_sysid(cfg, root, rec)
            if "dynamics" in todo and "delta_dynamics" in cfg.variants:
                fit_dynamics(cfg, root, rec)
        if "finetune" in todo:
            for variant in cfg.variants:
                finetune(cfg, root, variant, progress)
        if "evaluate" in todo:
            results.update(evaluate(cfg, root, cfg.variants))
            if (root / "delta" / "gain_check.json").exists():
                results["gain_check"] = json.loads((root / "delta" / "gain_check.json").read_text())
            if (root / "sysid.json").exists():
                results["sysid"] = json.loads((root / "sysid.json").read_text())
            results["twin"] = cfg.twin
            results["seconds"] = time.perf_counter() - t0
            run.write_results(results)
            (root / "results.md").write_text(results_table(results, f"ASAP ({root})"))
    finally:
        run.close()
        torch.set_num_threads(threads)
    return results


def results_table(results: dict[str, Any], title: str) -> str:
    mm = lambda x: f"{1000 * x:.1f}"
    lines = [f"# {title}", "", f"Real robot (twin): `{results.get('twin')}`", "",
             "## Closed loop on the twin (deployed without any model in the loop)", "",
             "| policy | ee position error (mm) | joint pos (rad) | joint vel (rad/s) | joint acc (rad/s²) | vs vanilla |",
             "|---|---|---|---|---|---|"]
    red = results.get("reduction_vs_vanilla", {})
    for name, row in results["closed_loop"].items():
        vs = f"{-100 * red[name]:+.0f}%" if name in red and name != "vanilla" else ""
        lines.append(f"| {name} | {mm(row['ee_pos_error'])} | {row['joint_pos_error']:.4f} | {row['joint_vel_error']:.3f} "
                     f"| {row['joint_acc_error']:.2f} | {vs} |")
    lines += ["", "## Open-loop replay of held-out real rollouts", "",
              "| simulator | ee position error (mm) | joint pos (rad) | joint vel (rad/s) |", "|---|---|---|---|"]
    for name, row in results["open_loop_replay"].items():
        lines.append(f"| {name} | {mm(row['ee_pos_error'])} | {row['joint_pos_error']:.4f} | {row['joint_vel_error']:.3f} |")
    if "sysid" in results:
        lines += ["", f"SysID fit: `{results['sysid']['twin']}`"]
    if "gain_check" in results:
        g = results["gain_check"]
        lines += ["", (f"Gain check (twin gain {g['actuator_gain']}): learned vs closed-form delta, relative gap "
                  f"{g['relative_gap']:.2f}, correlation {g['correlation']:.2f}")]
    return "\n".join(lines) + "\n"
