"""iRe-VLA: RL on the action head, supervised learning on the trunk, iterated.

    stage 0   SFT of the VLA on expert demos D_e (recipes/sft.py), or a finished SFT run
    then, for each iteration and each task (or set of tasks) in ``tasks``:
      RL      PPO (algos/ppo.py) on the action head and a fresh value head; the backbone and
              the adapter are frozen: features are computed without a graph, and after the
              stage every frozen parameter is checked bit for bit and for a gradient;
              sparse 0/1 success reward; successful episodes are written to D_RL
              (RUN/d_rl/stage-NN, one dataset per RL stage)
      SL      behaviour cloning of the adapter and head on D_e together with all of D_RL

``mode: whole-model-ppo`` is the baseline the paper compares against: the same RL stages
with every parameter SFT trained (adapter and head) updated by PPO, and no SL stage.

Each completed stage is checkpointed; ``--resume`` continues with the next stage (an RL
stage cut short is rerun; its partial D_RL is kept aside, not reused).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vlarl.algos.bc import bc_loss
from vlarl.algos.ppo import ActionDistribution, PPOConfig, gae, ppo_update
from vlarl.data import EpisodeDataset
from vlarl.data.episodes import EpisodeRecorder, EpisodeWriter
from vlarl.errors import VlarlError, unknown
from vlarl.fileio import atomic_write_text
from vlarl.models.groups import set_trainable
from vlarl.models.heads import ValueHead
from vlarl.models.policy import VLAPolicy
from vlarl.recipes.sft import SFTConfig, SFTData, cache_tokens, dataset_limits, evaluate_policy, load_sft_policy, stage0
from vlarl.runtime import Run, resolve_device, seed_everything
from vlarl.runtime.config import check_ranges, ranged

MODES = ("ire-vla", "whole-model-ppo")


@dataclass
class RLStageConfig:
    steps: int = ranged(10_000, ge=1)  # env steps per RL stage
    num_envs: int = ranged(2, ge=1)  # parallel env processes (split over the stage's tasks)
    rollout_steps: int = ranged(256, ge=1)  # steps per env between PPO updates
    value_lr: float = ranged(1e-3, gt=0)  # the value head starts from scratch each stage
    value_warmup_epochs: int = ranged(10, ge=0)  # fit the new value head on the first rollout before any policy step
    ppo: PPOConfig = field(default_factory=PPOConfig)


@dataclass
class SLStageConfig:
    steps: int = ranged(1000, ge=1)
    batch_size: int = ranged(128, ge=1)
    lr: float = ranged(1e-4, gt=0)
    weight_decay: float = ranged(1e-4, ge=0)
    balance_tasks: bool = True  # each batch draws tasks equally, not frames: a task with little data is not drowned


@dataclass
class IReVLAConfig:
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=1000))  # stage 0
    sft_run: str | None = None  # start from this finished SFT run instead of training stage 0
    tasks: list[str] = field(default_factory=list)  # one entry per RL stage: "metaworld/a" or "metaworld/a,metaworld/b"; default: each task of the demos
    iterations: int = ranged(1, ge=1)
    mode: str = ranged("ire-vla", choices=MODES)  # or "whole-model-ppo" (the baseline)
    rl: RLStageConfig = field(default_factory=RLStageConfig)
    sl: SLStageConfig = field(default_factory=SLStageConfig)
    eval_episodes: int = ranged(20, ge=1)
    eval_envs: int = ranged(2, ge=1)
    # evaluate after each stage: "trained" tasks, "all", or "none"
    eval_after_stage: str = ranged("trained", choices=("trained", "all", "none"))
    video_episodes: int = ranged(1, ge=0)
    seed: int = ranged(0, ge=0)
    run_dir: str = "runs/ire-vla"
    device: str = "auto"


# --- stage plan ---------------------------------------------------------------------------
def stage_plan(cfg: IReVLAConfig, env_names: list[str]) -> list[tuple[str, list[str]]]:
    """[(kind, task env names)] after stage 0, in order: RL then SL per task entry."""
    entries = [[t.strip() for t in e.split(",") if t.strip()] for e in cfg.tasks] or [[e] for e in env_names]
    for entry in entries:
        for name in entry:
            if name not in env_names:
                raise VlarlError(f"tasks: {name!r} has no demos in the SFT data; " + unknown("task", name, env_names))
    plan = []
    for _ in range(cfg.iterations):
        for entry in entries:
            plan.append(("rl", entry))
            if cfg.mode == "ire-vla":
                plan.append(("sl", entry))
    return plan


# --- RL stage -----------------------------------------------------------------------------
def _split_obs(obs: dict[str, Any], i: int) -> dict[str, Any]:
    out = {"state": obs["state"][i]}
    if "pixels" in obs:
        out["pixels"] = {c: v[i] for c, v in obs["pixels"].items()}
    return out


def _obs_tensors(obs: dict[str, Any], cameras: list[str], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    if isinstance(obs, np.ndarray):  # an object array of per-env dicts (final observations)
        obs = {"state": np.stack([o["state"] for o in obs]),
               "pixels": {c: np.stack([o["pixels"][c] for o in obs]) for c in cameras}}
    pixels = {c: torch.as_tensor(np.asarray(obs["pixels"][c]), device=device) for c in cameras}
    return pixels, torch.as_tensor(np.asarray(obs["state"], np.float32), device=device)


def frozen_snapshot(policy: VLAPolicy) -> dict[str, torch.Tensor]:
    """Copies of every parameter that is not trainable now."""
    return {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}


def check_frozen(policy: VLAPolicy, snapshot: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Raise unless every snapshot parameter is bit-identical and has no gradient."""
    changed, graded = [], []
    for name, p in policy.named_parameters():
        if name in snapshot:
            if not torch.equal(p.detach(), snapshot[name]):
                changed.append(name)
            if p.grad is not None:
                graded.append(name)
    if changed or graded:
        raise VlarlError(f"frozen parameters were touched by the RL stage: changed {changed[:5]}, "
                         f"with gradients {graded[:5]}")
    groups: dict[str, int] = {}
    for name in snapshot:
        g = policy.param_group(name)
        groups[g] = groups.get(g, 0) + 1
    return {"bit_identical": True, "no_grad": True, "frozen_tensors": len(snapshot), "frozen_by_group": groups}


def rl_stage(policy: VLAPolicy, lang_of: dict[str, torch.Tensor], specs: list[tuple[str, dict[str, Any]]],
             cfg: IReVLAConfig, whole_model: bool, d_rl_dir: Path, seed: int, device: torch.device,
             log: Any, progress: bool = True) -> dict[str, Any]:
    """PPO on one task set; successful episodes go to ``d_rl_dir``. ``specs``: one
    (env name, options) per env process. ``log(env_steps, **scalars)`` records progress."""
    from vlarl.envs import make_vec_mixed

    rl, ppo = cfg.rl, cfg.rl.ppo
    set_trainable(policy, *(("adapter", "head") if whole_model else ("head",)))
    snapshot = frozen_snapshot(policy)
    actor = ActionDistribution(policy.head, ppo.init_log_std).to(device)
    value = ValueHead(policy.cfg.dim).to(device)
    # the policy's trainable groups, then the distribution's own parameters (a log-std, if any)
    trained = [p for p in policy.parameters() if p.requires_grad]
    trained += [p for name, p in actor.named_parameters() if not name.startswith("head.")]
    opt = torch.optim.Adam([{"params": trained, "lr": ppo.lr}, {"params": list(value.parameters()), "lr": rl.value_lr}],
                           eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    policy.eval()  # no dropout or batch-norm updates: old and new log-probs must agree
    n = len(specs)
    vec = make_vec_mixed(specs, asynchronous=n > 1)
    writer = EpisodeWriter(d_rl_dir)
    stats: dict[str, Any] = {"env_steps": 0, "episodes": 0, "successes": 0, "updates": 0}
    curve: list[dict[str, float]] = []
    bar = tqdm(total=rl.steps, desc=f"rl {','.join(sorted({s[0] for s in specs}))}", unit="step", disable=not progress)
    try:
        instructions = list(vec.get_attr("instruction"))
        lang = torch.cat([lang_of[i] for i in instructions]).to(device)
        obs, _ = vec.reset(seed=seed)
        recorders = [EpisodeRecorder(_split_obs(obs, i)) for i in range(n)]
        ep_success = np.zeros(n, bool)
        while stats["env_steps"] < rl.steps:
            T = rl.rollout_steps
            buf: dict[str, list[torch.Tensor]] = {k: [] for k in ("tokens", "state", "features", "actions", "logp",
                                                                  "values", "next_values", "rewards", "term", "done")}
            finished: list[bool] = []
            for _t in range(T):
                pixels, state = _obs_tensors(obs, policy.cameras, device)
                with torch.no_grad():
                    tokens = policy.encode_images(pixels)
                    if whole_model:  # stored in float16 for the update: act on exactly what it will see
                        tokens = tokens.half()
                    feats = policy.features(tokens, state, lang)
                    dist = actor(feats)
                    action = dist.sample()
                    buf["logp"].append(dist.log_prob(action))
                    buf["values"].append(value(feats))
                buf["tokens"].append(tokens if whole_model else tokens[:0])
                buf["state"].append(state)
                buf["features"].append(feats)
                buf["actions"].append(action)
                env_action = action.clamp(-1, 1).cpu().numpy()
                obs, reward, term, trunc, info = vec.step(env_action)
                done = term | trunc
                success = np.asarray(info["is_success"], bool).copy()
                if done.any():
                    success[done] = np.asarray(info["final_info"]["is_success"], bool)[done]
                next_values = torch.zeros(n, device=device)
                cut = np.flatnonzero(trunc & ~term)  # time limit: bootstrap from the final observation
                if len(cut):
                    fp, fs = _obs_tensors(info["final_obs"][cut], policy.cameras, device)
                    with torch.no_grad():
                        next_values[cut] = value(policy.features(policy.encode_images(fp), fs, lang[cut]))
                buf["next_values"].append(next_values)
                buf["rewards"].append(torch.as_tensor(reward, dtype=torch.float32, device=device))
                buf["term"].append(torch.as_tensor(term, device=device))
                buf["done"].append(torch.as_tensor(done, device=device))
                ep_success |= success
                for i in range(n):
                    nxt = info["final_obs"][i] if done[i] else _split_obs(obs, i)
                    recorders[i].add(env_action[i], float(reward[i]), nxt, bool(term[i]), bool(trunc[i]), bool(success[i]))
                    if done[i]:
                        finished.append(bool(ep_success[i]))
                        if ep_success[i]:
                            writer.write_episode(recorders[i].arrays(), specs[i][0].split("/", 1)[-1], instructions[i],
                                                 source="policy", env=specs[i][0], env_options=specs[i][1])
                        recorders[i] = EpisodeRecorder(_split_obs(obs, i))
                        ep_success[i] = False
                stats["env_steps"] += n
                bar.update(n)
            # V(s_{t+1}) of a step that did not end the episode is V of the next step's observation
            pixels, state = _obs_tensors(obs, policy.cameras, device)
            with torch.no_grad():
                last_value = value(policy.features(policy.encode_images(pixels), state, lang))
            values = torch.stack(buf["values"])
            following = torch.cat([values[1:], last_value[None]])
            done_t, term_t = torch.stack(buf["done"]), torch.stack(buf["term"])
            next_v = torch.where(done_t, torch.stack(buf["next_values"]), following)
            adv, returns = gae(torch.stack(buf["rewards"]), values, next_v, term_t, done_t, ppo.gamma, ppo.gae_lambda)
            flat = {k: torch.cat(v) for k, v in buf.items() if k in ("tokens", "state", "features", "actions", "logp")}
            flat_lang = lang.repeat(T, 1)

            if stats["updates"] == 0 and rl.value_warmup_epochs > 0:
                # A value head from scratch makes the first advantages noise; fit it first so the
                # first policy steps follow the success signal, not the value head's init.
                adv, returns = _warm_up_value(value, flat["features"], returns, rl, gen)
                adv = adv.view_as(values)
                returns = returns.view_as(values)

            def evaluate(idx: torch.Tensor, actions: torch.Tensor, flat: dict[str, torch.Tensor] = flat,
                         flat_lang: torch.Tensor = flat_lang) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                if whole_model:  # gradients flow through the trunk; the encoder's tokens are frozen
                    feats = policy.features(flat["tokens"][idx].float(), flat["state"][idx], flat_lang[idx])
                else:  # the trunk is frozen: features from the rollout, no graph behind them
                    feats = flat["features"][idx]
                dist = actor(feats)
                return dist.log_prob(actions), dist.entropy(), value(feats)

            info_ppo = ppo_update(evaluate, flat["actions"], flat["logp"], adv.flatten(), returns.flatten(),
                                  trained + list(value.parameters()), opt, ppo, generator=gen)
            stats["updates"] += 1
            stats["episodes"] += len(finished)
            stats["successes"] += sum(finished)
            row = {"rollout_success": float(np.mean(finished)) if finished else float("nan"),
                   "rollout_episodes": len(finished), "d_rl_episodes": writer.num_episodes,
                   **{f"ppo/{k}": v for k, v in info_ppo.items()}}
            if hasattr(actor, "log_std"):
                row["ppo/std"] = float(actor.log_std.detach().exp().mean())
            curve.append({"env_steps": stats["env_steps"], **row})
            log(stats["env_steps"], **row)
            bar.set_postfix(success=f"{row['rollout_success']:.2f}", d_rl=writer.num_episodes)
    finally:
        bar.close()
        writer.close()
        vec.close()
    stats["freeze_check"] = check_frozen(policy, snapshot)  # before any gradient is cleared
    policy.zero_grad(set_to_none=True)  # gradients of trained parameters are not kept
    stats["d_rl_episodes"] = writer.num_episodes
    stats["train_success"] = stats["successes"] / max(stats["episodes"], 1)
    stats["curve"] = curve
    return stats


def _warm_up_value(value: torch.nn.Module, features: torch.Tensor, returns: torch.Tensor, rl: RLStageConfig,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Regress V on the first rollout's returns; advantages recomputed as returns - V."""
    opt = torch.optim.Adam(value.parameters(), lr=rl.value_lr)
    target = returns.flatten()
    for _ in range(rl.value_warmup_epochs):
        for idx in torch.randperm(len(target), generator=gen).split(rl.ppo.minibatch_size):
            loss = 0.5 * (value(features[idx]) - target[idx]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return target - value(features), target


# --- SL stage -----------------------------------------------------------------------------
def sample_frames(task_of_frame: torch.Tensor, n: int, rng: np.random.Generator, balance_tasks: bool) -> torch.Tensor:
    """``n`` frame indices: uniform over frames, or a uniform task then a uniform frame of it."""
    if not balance_tasks:
        return torch.from_numpy(rng.integers(0, len(task_of_frame), n))
    order = torch.argsort(task_of_frame, stable=True)
    counts = torch.bincount(task_of_frame)
    present = torch.nonzero(counts).squeeze(1)
    starts = torch.cumsum(counts, 0) - counts
    task = present[torch.from_numpy(rng.integers(0, len(present), n))]
    offset = (torch.from_numpy(rng.random(n)) * counts[task]).long()
    return order[starts[task] + offset]


def sl_stage(policy: VLAPolicy, data: SFTData, lang_of: dict[str, torch.Tensor], cfg: SLStageConfig,
             rng: np.random.Generator, device: torch.device) -> dict[str, float]:
    """Behaviour cloning of adapter and head on ``data`` (tokens cached: the backbone is frozen)."""
    set_trainable(policy, "adapter", "head")
    tokens = cache_tokens(policy, data, device)
    lang_table = torch.cat([lang_of[i] for i in data.instructions]).to(device)
    state, actions, instr = data.state.to(device), data.actions.to(device), data.instr.to(device)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    policy.train()
    losses = []
    for _ in range(cfg.steps):
        idx = sample_frames(data.instr, cfg.batch_size, rng, cfg.balance_tasks).to(device)
        loss = bc_loss(policy, tokens[idx].float(), state[idx], lang_table[instr[idx]], actions[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    policy.eval()
    policy.zero_grad(set_to_none=True)
    return {"loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-20:]))}


# --- the recipe ---------------------------------------------------------------------------
def _eval_summary(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {env: {"success_rate": r["success_rate"], "ci95": r["ci95"], "mean_length": r["mean_length"],
                  "episodes": r["episodes"]} for env, r in results.items()}


def train_ire_vla(cfg: IReVLAConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    from vlarl.models.language import InstructionEncoder

    given = resume.config if resume is not None else cfg
    check_ranges(given, "ire-vla")  # before a run directory is made
    run, cfg = Run.start(cfg, resume)
    device = resolve_device(cfg.device)
    rng = seed_everything(cfg.seed)
    sft_dir, sft_results = stage0(cfg, run, progress)
    policy, spec = load_sft_policy(sft_dir, device)
    atomic_write_text(run.path / "policy.json", json.dumps(spec, indent=2))
    tasks = {i: t for i, t in spec["tasks"].items() if t.get("env")}  # instruction -> env and options
    by_env = {t["env"]: i for i, t in tasks.items()}
    plan = stage_plan(cfg, list(by_env))
    encoder = InstructionEncoder()
    lang_of = {i: encoder([i]) for i in tasks}
    eval_cfg = SFTConfig(eval_episodes=cfg.eval_episodes, eval_envs=cfg.eval_envs, seed=cfg.seed)

    def evaluate(envs: list[str], out: Path, videos: int = 0) -> dict[str, dict[str, Any]]:
        return _eval_summary(evaluate_policy(policy, encoder, {by_env[e]: tasks[by_env[e]] for e in envs},
                                             eval_cfg, out, videos=videos))

    counters = run.restore({"policy": policy}, None, {"rng": rng})
    if counters is None:
        own = (sft_results or {}).get("per_task", {})
        if set(own) >= set(by_env) and all(own[e].get("episodes") == cfg.eval_episodes for e in by_env):
            before = {e: own[e] for e in by_env}  # the SFT run's own final evaluation
        else:
            before = evaluate(list(by_env), run.path / "eval_sft")
        # "clock" orders logs and checkpoints: env steps so far plus one tick per finished stage,
        # so a resume drops exactly the rows logged by an unfinished stage
        counters = {"stage": 0, "clock": 0, "before": before, "history": [], "after_stage": {}, "wall_seconds": 0.0}
        run.save(0, {"policy": policy}, None, counters, {"rng": rng})
    counters.setdefault("clock", counters["stage"])
    expert, expert_limit = _sft_source(sft_dir) if cfg.sft_run else (cfg.sft.datasets, cfg.sft.episodes_per_dataset)
    d_e_episodes, d_e_frames = _size(expert, expert_limit)
    t_start = time.perf_counter()
    for k in range(counters["stage"], len(plan)):
        kind, envs = plan[k]
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"stage": k + 1, "kind": kind, "tasks": envs}
        if kind == "rl":
            d_rl_dir = run.path / "d_rl" / f"stage-{k + 1:02d}"
            if d_rl_dir.exists():  # from an interrupted attempt at this stage: kept aside, not reused
                d_rl_dir.rename(d_rl_dir.with_name(f"{d_rl_dir.name}.interrupted-{int(time.time())}"))
            n = max(cfg.rl.num_envs, len(envs))
            specs = [(envs[i % len(envs)], {**tasks[by_env[envs[i % len(envs)]]].get("options", {}),
                                            "reward": "sparse", "terminate_on_success": True}) for i in range(n)]
            clock0 = counters["clock"]

            def log(env_steps: int, clock0: int = clock0, **row: float) -> None:
                run.log(clock0 + env_steps, **{f"rl/{key}": v for key, v in row.items()})

            stats = rl_stage(policy, lang_of, specs, cfg, cfg.mode == "whole-model-ppo", d_rl_dir,
                             cfg.seed * 1000 + k, device, log, progress)
            entry.update({key: stats[key] for key in ("env_steps", "episodes", "successes", "train_success",
                                                      "d_rl_episodes", "updates", "freeze_check")})
            atomic_write_text(run.path / f"rl_curve_stage{k + 1:02d}.json", json.dumps(stats["curve"], indent=1))
            counters["clock"] += stats["env_steps"]
        else:
            d_rl = _d_rl_datasets(run.path, counters["history"])
            data = SFTData(expert + d_rl, policy.cfg.chunk,
                           dataset_limits(expert_limit, len(expert)) + [None] * len(d_rl), cfg.sft.skip_bad_episodes)
            if data.skipped:
                entry["skipped_episodes"] = {"count": len(data.skipped), "episodes": data.skipped}
            rl_episodes, rl_frames = _size(d_rl, None)
            entry.update(sl_stage(policy, data, lang_of, cfg.sl, rng, device))
            entry.update({"d_e_episodes": d_e_episodes, "d_rl_episodes_total": rl_episodes, "frames": len(data),
                          "d_e_frames": d_e_frames, "d_rl_frames": rl_frames})
            entry["d_rl_ratio"] = rl_episodes / max(d_e_episodes, 1)
            entry["d_rl_frame_ratio"] = rl_frames / max(d_e_frames, 1)
            run.log(counters["clock"] + 1, **{"sl/d_rl_ratio": entry["d_rl_ratio"], "sl/loss": entry["loss_last"],
                                              "sl/d_rl_frame_ratio": entry["d_rl_frame_ratio"]})
        last_of_task = cfg.mode == "whole-model-ppo" or kind == "sl"
        if cfg.eval_after_stage != "none" and last_of_task:
            which = envs if cfg.eval_after_stage == "trained" else list(by_env)
            res = evaluate(which, run.path / f"eval_stage{k + 1:02d}")
            entry["eval"] = res
            for env, r in res.items():
                counters["after_stage"].setdefault(env, []).append({"stage": k + 1, "success_rate": r["success_rate"]})
            run.log(counters["clock"] + 1, **{f"eval/{e}": r["success_rate"] for e, r in res.items()})
        entry["seconds"] = time.perf_counter() - t0
        counters["history"].append(entry)
        counters["stage"] = k + 1
        counters["clock"] += 1
        counters["wall_seconds"] += time.perf_counter() - t_start
        t_start = time.perf_counter()
        run.save(counters["clock"], {"policy": policy}, None, counters, {"rng": rng})
        if progress:
            print(json.dumps({key: v for key, v in entry.items() if key not in ("eval", "freeze_check")}), flush=True)
    final = evaluate_policy(policy, encoder, tasks, eval_cfg, run.path / "eval", videos=cfg.video_episodes)
    results = summarize(counters, _eval_summary(final), cfg)
    results["videos"] = {e: r["video"] for e, r in final.items() if "video" in r}
    run.write_results(results)
    atomic_write_text(run.path / "results.md", results_table(results, f"{cfg.mode} ({run.path})"))
    run.close()
    return results


def _size(paths: list[str], limit: int | Sequence[int | None] | None) -> tuple[int, int]:
    """(episodes, frames) of the first ``limit`` episodes of each dataset (or one limit per
    dataset), as SFTData takes them, from the datasets' indexes alone (no episode file is read)."""
    metas = [m for p, n in zip(paths, dataset_limits(limit, len(paths))) for m in EpisodeDataset(p).episodes[:n]]
    return len(metas), sum(m.length for m in metas)


def _d_rl_datasets(root: Path, history: list[dict[str, Any]]) -> list[str]:
    """The D_RL datasets of completed RL stages that hold episodes."""
    return [str(root / "d_rl" / f"stage-{h['stage']:02d}") for h in history
            if h["kind"] == "rl" and h.get("d_rl_episodes", 0) > 0]


def _sft_source(sft_dir: Path) -> tuple[list[str], int | list[int] | None]:
    """The demo datasets of a finished SFT run and how many episodes of each it used."""
    from vlarl.runtime import load_config

    sft = load_config(SFTConfig, sft_dir / "config.yaml")
    return sft.datasets, sft.episodes_per_dataset


def summarize(counters: dict[str, Any], final: dict[str, dict[str, Any]], cfg: IReVLAConfig) -> dict[str, Any]:
    """Before/after per task, tasks improved by >= 0.2, and forgetting: the drop from a
    task's success right after the stage that trained it to its success at the end."""
    before = counters["before"]
    per_task, forgetting = {}, {}
    for env, r in final.items():
        b = before[env]["success_rate"]
        per_task[env] = {"before": b, "before_ci95": before[env]["ci95"], "after": r["success_rate"],
                         "after_ci95": r["ci95"], "delta": r["success_rate"] - b,
                         "mean_length_before": before[env].get("mean_length"), "mean_length_after": r["mean_length"]}
        own = counters["after_stage"].get(env)
        if own:
            peak = own[0]["success_rate"]  # right after the task's own (first) stage
            forgetting[env] = {"after_own_stage": peak, "final": r["success_rate"], "drop": max(0.0, peak - r["success_rate"])}
    rl = [h for h in counters["history"] if h["kind"] == "rl"]
    sl = [h for h in counters["history"] if h["kind"] == "sl"]
    return {
        "mode": cfg.mode,
        "per_task": per_task,
        "mean_before": float(np.mean([p["before"] for p in per_task.values()])),
        "mean_after": float(np.mean([p["after"] for p in per_task.values()])),
        "tasks_improved": sum(p["delta"] >= 0.2 - 1e-9 for p in per_task.values()),
        "forgetting": forgetting,
        "max_forgetting": max((f["drop"] for f in forgetting.values()), default=0.0),
        "rl_env_steps": sum(h["env_steps"] for h in rl),
        "d_rl_ratio": [h["d_rl_ratio"] for h in sl],
        "freeze_checks": [h["freeze_check"] for h in rl],
        "stages": counters["history"],
        "wall_seconds": counters["wall_seconds"],
    }


def results_table(results: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "", "| task | before | 95% CI | after | 95% CI | delta |", "|---|---|---|---|---|---|"]
    for env, p in results["per_task"].items():
        lines.append(f"| {env} | {p['before']:.2f} | {p['before_ci95'][0]:.2f}-{p['before_ci95'][1]:.2f} | "
                     f"{p['after']:.2f} | {p['after_ci95'][0]:.2f}-{p['after_ci95'][1]:.2f} | {p['delta']:+.2f} |")
    lines += ["", (f"Mean {results['mean_before']:.2f} -> {results['mean_after']:.2f}; "
              f"tasks improved by >= 0.2: {results['tasks_improved']}; max forgetting {results['max_forgetting']:.2f}.")]
    return "\n".join(lines) + "\n"
