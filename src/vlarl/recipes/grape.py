"""GRAPE: iterative trajectory-wise preference optimisation of a VLA, aligned by stage costs.

    stage 0   SFT of the VLA on demos (recipes/sft.py), or a finished SFT run; its head must
              give log-probabilities (``tokens``: 256 bins per dimension, or ``gaussian``)
    then, for each iteration (default 3):
      sample  K trajectories per task from the current policy (actions sampled from the head)
      score   GCPG: λ1·log π(τ) + λ2·R_ext(τ) + λ3·success, R_ext from the task's stage costs
              (envs/stage_costs.py; the objective adds keep-out or step penalties)
      pair    per task, the i-th best with the i-th worst, i < m
      train   TPO (algos/grape.py) on the pairs against a frozen reference policy, on the
              adapter and head (the image encoder stays frozen; its tokens are recorded)
      eval    deterministic rollouts on fixed start states: success, length, keep-out
              violations, R_ext

Each finished iteration is checkpointed; ``--resume`` continues with the next one.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vlarl.algos.grape import GCPGWeights, TPOConfig, gcpg_score, preference_pairs, tpo_step, trajectory_log_probs
from vlarl.envs.cost_generator import CostGeneratorConfig, generate_costs
from vlarl.envs.stage_costs import (
    OBJECTIVES,
    KeepOutZone,
    Keypoints,
    TaskCosts,
    keypoints,
    objective_costs,
    stage_report,
)
from vlarl.errors import VlarlError, unknown
from vlarl.eval.stats import wilson_interval
from vlarl.fileio import atomic_write_text
from vlarl.models.groups import set_trainable
from vlarl.models.policy import PolicyConfig, VLAPolicy
from vlarl.recipes.sft import SFTConfig, load_sft_policy, stage0
from vlarl.runtime import Run, resolve_device, seed_everything
from vlarl.runtime.config import check_ranges, ranged


@dataclass
class GRAPEConfig:
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=1000, policy=PolicyConfig(head="tokens")))
    sft_run: str | None = None  # start from this finished SFT run instead of training stage 0
    tasks: list[str] = field(default_factory=list)  # env names; default: every task of the SFT data
    iterations: int = ranged(3, ge=1)
    samples_per_task: int = ranged(32, ge=2)  # K trajectories sampled per task and iteration (2 make a pair)
    samples_per_start: int = ranged(1, ge=1)  # >1: the K trajectories come in groups from one start state, paired inside groups
    temperature: float = ranged(1.0, gt=0)  # sampling temperature (token logits / T; Gaussian std x T); scores use T = 1
    pairs_per_task: int = ranged(8, ge=1)  # m: top-m paired with bottom-m (per group when samples_per_start > 1)
    weights: GCPGWeights = field(default_factory=GCPGWeights)
    tpo: TPOConfig = field(default_factory=TPOConfig)
    objective: str = ranged("task", choices=OBJECTIVES)  # "task", "safety" (keep-out zone) or "efficiency" (fewer steps)
    keep_out: KeepOutZone | None = None  # measured whenever set; penalised under "safety"
    safety_weight: float = ranged(0.5, ge=0)  # R_ext cost per step inside the keep-out zone
    efficiency_weight: float = ranged(0.02, ge=0)  # R_ext cost per step
    costs: CostGeneratorConfig = field(default_factory=CostGeneratorConfig)
    sample_envs: int = ranged(2, ge=1)
    eval_episodes: int = ranged(20, ge=1)
    eval_envs: int = ranged(2, ge=1)
    video_episodes: int = ranged(1, ge=0)
    seed: int = ranged(0, ge=0)
    run_dir: str = "runs/grape"
    device: str = "auto"


# --- rollouts -----------------------------------------------------------------------------
@dataclass
class Trajectory:
    env: str
    state: torch.Tensor  # (T, S)
    actions: torch.Tensor  # (T, A), exactly as sampled
    tokens: torch.Tensor | None  # (T, N, C) float16 image tokens of the frozen encoder, when recorded
    keypoints: list[Keypoints]  # T + 1: after reset, then after each action
    success: bool
    start: int  # which start state: rollouts with one seed give episode ``start`` the same one

    @property
    def length(self) -> int:
        return len(self.actions)


def rollouts(policy: VLAPolicy, lang: torch.Tensor, env_name: str, options: dict[str, Any], episodes: int,
             num_envs: int, seed: int, sample: bool, record: bool = False, video_path: Path | None = None,
             progress: bool = True, temperature: float = 1.0) -> list[Trajectory]:
    """``episodes`` episodes of ``policy`` (deterministic unless ``sample``), each worker a fixed
    share (worker i: episodes i, i + n, ...), so the start states depend on ``seed`` alone."""
    from vlarl.envs import make_vec
    from vlarl.envs.wrappers import PrivilegedInfo

    device = next(policy.parameters()).device
    n = max(1, min(num_envs, episodes))
    quota = [episodes // n + (i < episodes % n) for i in range(n)]
    vec = make_vec(env_name, n, asynchronous=n > 1, wrappers=(PrivilegedInfo,), **options)
    out: list[Trajectory] = []
    frames: list[np.ndarray] = []
    bar = tqdm(total=episodes, desc=f"{'sample' if sample else 'eval'} {env_name}", unit="ep", disable=not progress,
               leave=False)
    try:
        obs, info = vec.reset(seed=seed)
        bufs = [_new_buffer(env_name, info["privileged_state"][i]) for i in range(n)]
        done_count = [0] * n
        while any(d < q for d, q in zip(done_count, quota)):
            if video_path is not None and done_count[0] < 1:
                frames.append(next(iter(obs["pixels"].values()))[0].copy())
            pixels = {c: torch.as_tensor(np.asarray(obs["pixels"][c]), device=device) for c in policy.cameras}
            state = torch.as_tensor(np.asarray(obs["state"], np.float32), device=device)
            with torch.no_grad():
                tokens = policy.encode_images(pixels)
                if record:  # kept in float16: act on exactly what TPO will re-score
                    tokens = tokens.half()
                feats = policy.features(tokens, state, lang.expand(n, -1))
                action = act(policy, feats, sample, temperature)
            for i in range(n):
                bufs[i]["state"].append(state[i].cpu())
                bufs[i]["actions"].append(action[i].cpu())
                if record:
                    bufs[i]["tokens"].append(tokens[i].cpu())
            obs, _, term, trunc, info = vec.step(action.cpu().numpy())
            done = term | trunc
            for i in range(n):
                final = info["final_info"] if done[i] else info
                bufs[i]["keypoints"].append(keypoints(env_name, final["privileged_state"][i]))
                bufs[i]["success"] |= bool(final["is_success"][i])
                if done[i]:
                    if done_count[i] < quota[i]:
                        out.append(_finish(bufs[i], record, start=i + n * done_count[i]))
                        done_count[i] += 1
                        bar.update(1)
                    bufs[i] = _new_buffer(env_name, info["privileged_state"][i])
    finally:
        bar.close()
        vec.close()
    if frames and video_path is not None:
        from vlarl.eval.video import write_video

        write_video(frames, video_path, fps=20)
    return out


def act(policy: VLAPolicy, feats: torch.Tensor, sample: bool, temperature: float = 1.0) -> torch.Tensor:
    """The first action of the head's chunk: its mode, or a sample at ``temperature``."""
    head = policy.head
    if not sample or temperature == 1.0:
        return head(feats, deterministic=not sample)[:, 0]
    if hasattr(head, "logits"):  # tokens
        tokens = torch.distributions.Categorical(logits=head.logits(feats) / temperature).sample()
        return head.detokenize(tokens)[:, 0]
    if hasattr(head, "distribution"):  # tanh-Gaussian
        mu, log_std = head.distribution(feats)
        return torch.tanh(mu + temperature * log_std.exp() * torch.randn_like(mu))[:, 0]
    raise VlarlError(f"head {policy.cfg.head!r} cannot be sampled at a temperature")


def _new_buffer(env_name: str, privileged: np.ndarray) -> dict[str, Any]:
    return {"env": env_name, "state": [], "actions": [], "tokens": [], "success": False,
            "keypoints": [keypoints(env_name, privileged)]}


def _finish(buf: dict[str, Any], record: bool, start: int) -> Trajectory:
    return Trajectory(buf["env"], torch.stack(buf["state"]), torch.stack(buf["actions"]),
                      torch.stack(buf["tokens"]) if record else None, buf["keypoints"], buf["success"], start)


# --- evaluation ---------------------------------------------------------------------------
def rollout_stats(trajs: list[Trajectory], costs: TaskCosts, zone: KeepOutZone | None) -> dict[str, Any]:
    """Success (95% Wilson interval), lengths, R_ext and, with a zone, keep-out violations."""
    k = sum(t.success for t in trajs)
    ok = [t.length for t in trajs if t.success]
    out: dict[str, Any] = {
        "episodes": len(trajs), "success_rate": k / len(trajs), "ci95": list(wilson_interval(k, len(trajs))),
        "mean_length": float(np.mean([t.length for t in trajs])),
        "mean_length_success": float(np.mean(ok)) if ok else None,
        "mean_r_ext": float(np.mean([stage_report(costs, t.keypoints).r_ext for t in trajs])),
    }
    if zone is not None:
        inside = [sum(zone.contains(kp["hand"]) for kp in t.keypoints[1:]) for t in trajs]
        out["violation_rate"] = float(np.mean([s > 0 for s in inside]))  # episodes that entered the zone
        out["steps_in_zone"] = float(np.mean(inside))
    return out


def _mean_over_tasks(per_task: dict[str, dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in per_task.values() if r.get(key) is not None]
    return float(np.mean(values)) if values else None


# --- the recipe ---------------------------------------------------------------------------
def _task_costs(cfg: GRAPEConfig, envs: dict[str, str], options: dict[str, dict[str, Any]],
                out_dir: Path) -> dict[str, TaskCosts]:
    """Each task's stage costs from the configured generator, aligned to the objective."""
    costs = {}
    for env, instruction in envs.items():
        sample: Keypoints = {}
        if cfg.costs.kind != "hand-written":  # a real state to check generated code on
            from vlarl.envs import make
            from vlarl.envs.base import vlarl_env

            e = make(env, **{**options[env], "obs_mode": "state"})
            e.reset(seed=cfg.seed)
            sample = keypoints(env, vlarl_env(e).privileged_state())
            e.close()
        base, code = generate_costs(cfg.costs, env, instruction, sample)
        if code is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / f"{env.replace('/', '_')}.py", code)
        costs[env] = objective_costs(base, cfg.objective, cfg.keep_out, cfg.safety_weight, cfg.efficiency_weight)
    return costs


def _check(cfg: GRAPEConfig) -> None:
    check_ranges(cfg, "grape")
    if cfg.objective == "safety" and cfg.keep_out is None:
        raise VlarlError("objective 'safety' needs keep_out: {low: [x, y, z], high: [x, y, z]}")
    if cfg.samples_per_task % cfg.samples_per_start:
        raise VlarlError(f"samples_per_start ({cfg.samples_per_start}) must divide samples_per_task "
                         f"({cfg.samples_per_task})")


def train_grape(cfg: GRAPEConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    from vlarl.models.language import InstructionEncoder

    given = resume.config if resume is not None else cfg
    if given is not None:  # before a run directory is made
        _check(given)
    run, cfg = Run.start(cfg, resume)
    device = resolve_device(cfg.device)
    rng = seed_everything(cfg.seed)
    sft_dir, _ = stage0(cfg, run, progress)
    policy, spec = load_sft_policy(sft_dir, device)
    if not hasattr(policy.head, "log_prob"):
        raise VlarlError(f"GRAPE needs a policy head with log-probabilities ('tokens' or 'gaussian'); "
                         f"{sft_dir} has {policy.cfg.head!r}")
    if policy.cfg.chunk != 1:
        raise VlarlError(f"GRAPE scores executed actions one step at a time; {sft_dir} has action chunks of "
                         f"{policy.cfg.chunk}")
    atomic_write_text(run.path / "policy.json", json.dumps(spec, indent=2))
    tasks = {i: t for i, t in spec["tasks"].items() if t.get("env")}  # instruction -> env and options
    by_env = {t["env"]: i for i, t in tasks.items()}
    envs = cfg.tasks or list(by_env)
    for env in envs:
        if env not in by_env:
            raise VlarlError(f"tasks: {env!r} has no demos in the SFT data; " + unknown("task", env, by_env))
    options = {e: dict(tasks[by_env[e]].get("options", {})) for e in envs}
    costs = _task_costs(cfg, {e: by_env[e] for e in envs}, options, run.path / "costs")
    encoder = InstructionEncoder()
    lang = {e: encoder([by_env[e]]).to(device) for e in envs}
    set_trainable(policy, "adapter", "head")
    params = [p for p in policy.parameters() if p.requires_grad]
    policy.eval()  # no dropout: sampled and re-scored log-probabilities must agree
    reference = copy.deepcopy(policy).requires_grad_(False) if cfg.tpo.reference == "sft" else None

    def evaluate(tag: str, videos: int = 0) -> dict[str, Any]:
        per_task = {}
        for e in envs:
            video = run.path / "eval" / f"{e.replace('/', '_')}.mp4" if videos else None
            trajs = rollouts(policy, lang[e], e, options[e], cfg.eval_episodes, cfg.eval_envs, 10_000 + cfg.seed,
                             sample=False, video_path=video, progress=progress)
            per_task[e] = rollout_stats(trajs, costs[e], cfg.keep_out) | ({"video": str(video)} if video else {})
        row: dict[str, Any] = {"iteration": tag, "per_task": per_task}
        for key in ("success_rate", "mean_length", "mean_r_ext", "violation_rate", "steps_in_zone"):
            row[f"mean_{key}" if not key.startswith("mean") else key] = _mean_over_tasks(per_task, key)
        return row

    counters = run.restore({"policy": policy}, None, {"rng": rng})
    if counters is None:
        # the logs' and checkpoints' x axis is TPO optimiser steps + finished iterations, so a
        # resume drops exactly the rows an unfinished iteration logged
        counters = {"iteration": 0, "history": [evaluate("sft")], "wall_seconds": 0.0, "tpo_steps": 0}
        run.save(0, {"policy": policy}, None, counters, {"rng": rng})
        _log_eval(run, 0, counters["history"][0])
    counters.setdefault("tpo_steps", 0)
    t_start = time.perf_counter()
    for it in range(counters["iteration"], cfg.iterations):
        t0 = time.perf_counter()
        trajs: list[Trajectory] = []
        pairs: list[tuple[int, int]] = []
        samples: dict[str, Any] = {}
        for k, e in enumerate(envs):
            got = _sample(policy, lang[e], e, options[e], cfg, cfg.seed * 100_000 + it * 1000 + k * 10, progress)
            task_pairs, samples[e] = _score_and_pair(policy, got, lang, costs[e], cfg)
            pairs += [(len(trajs) + w, len(trajs) + lo) for w, lo in task_pairs]
            trajs += got
        tpo = _train_tpo(policy, reference, params, trajs, pairs, lang, cfg.tpo, rng, run,
                         counters["tpo_steps"] + it) if pairs else {"steps": 0}
        counters["tpo_steps"] += tpo["steps"]
        row = evaluate(f"{it + 1}", videos=cfg.video_episodes if it + 1 == cfg.iterations else 0)
        row.update(samples=samples, tpo=tpo, pairs=len(pairs), seconds=time.perf_counter() - t0)
        counters["history"].append(row)
        counters["iteration"] = it + 1
        counters["wall_seconds"] += time.perf_counter() - t_start
        t_start = time.perf_counter()
        clock = counters["tpo_steps"] + it + 1
        run.save(clock, {"policy": policy}, None, counters, {"rng": rng})
        _log_eval(run, clock, row)
        if progress:
            print(json.dumps({"iteration": it + 1, "mean_success": row["mean_success_rate"], "pairs": len(pairs),
                              **{k: v for k, v in tpo.items() if k.endswith("_last")}}), flush=True)
    results = summarize(counters["history"], cfg)
    results["wall_seconds"] = counters["wall_seconds"]
    run.write_results(results)
    atomic_write_text(run.path / "results.md", results_table(results, f"GRAPE, objective {cfg.objective} ({run.path})"))
    run.close()
    return results


def _sample(policy: VLAPolicy, lang: torch.Tensor, env: str, options: dict[str, Any], cfg: GRAPEConfig, seed: int,
            progress: bool) -> list[Trajectory]:
    """K sampled trajectories: ``samples_per_start`` passes over the same K / samples_per_start
    start states (one seed per pass), or K start states."""
    starts = cfg.samples_per_task // cfg.samples_per_start
    out = []
    for _ in range(cfg.samples_per_start):
        out += rollouts(policy, lang, env, options, starts, cfg.sample_envs, seed, sample=True, record=True,
                        progress=progress, temperature=cfg.temperature)
    return out


def _score_and_pair(policy: VLAPolicy, got: list[Trajectory], lang: dict[str, torch.Tensor], costs: TaskCosts,
                    cfg: GRAPEConfig) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """GCPG scores of one task's sampled trajectories, their (winner, loser) pairs, and figures."""
    logp = _log_probs(policy, got, lang, cfg.tpo.window)
    r_ext = [stage_report(costs, t.keypoints).r_ext for t in got]
    scores = [gcpg_score(float(lp), r, t.success, cfg.weights) for lp, r, t in zip(logp, r_ext, got)]
    groups = [t.start for t in got] if cfg.samples_per_start > 1 else None
    pairs = preference_pairs(scores, cfg.pairs_per_task, groups)
    stats = {"success_rate": float(np.mean([t.success for t in got])),
             "mean_length": float(np.mean([t.length for t in got])), "mean_r_ext": float(np.mean(r_ext)),
             "mean_log_prob": float(logp.mean()), "mean_score": float(np.mean(scores)), "pairs": len(pairs),
             "winner_success": float(np.mean([got[w].success for w, _ in pairs])) if pairs else None,
             "loser_success": float(np.mean([got[lo].success for _, lo in pairs])) if pairs else None}
    return pairs, stats


def _step_log_prob(policy: VLAPolicy, trajs: list[Trajectory], lang: dict[str, torch.Tensor]):
    """log π(a_t | o_t) of trajectory j's steps [s, e), recomputed from the recorded tokens."""
    def fn(j: int, s: int, e: int) -> torch.Tensor:
        t = trajs[j]
        assert t.tokens is not None
        device = next(policy.parameters()).device
        feats = policy.features(t.tokens[s:e].to(device).float(), t.state[s:e].to(device), lang[t.env].expand(e - s, -1))
        return policy.log_prob(feats, t.actions[s:e, None].to(device))
    return fn


def _log_probs(policy: VLAPolicy, trajs: list[Trajectory], lang: dict[str, torch.Tensor], window: int) -> torch.Tensor:
    return trajectory_log_probs(_step_log_prob(policy, trajs, lang), [t.length for t in trajs], window)


def _train_tpo(policy: VLAPolicy, reference: VLAPolicy | None, params: list[torch.nn.Parameter],
               trajs: list[Trajectory], pairs: list[tuple[int, int]], lang: dict[str, torch.Tensor],
               cfg: TPOConfig, rng: np.random.Generator, run: Run, step0: int) -> dict[str, float]:
    """``cfg.epochs`` passes of TPO over the iteration's pairs, in minibatches of pairs."""
    ref = _log_probs(reference if reference is not None else policy, trajs, lang, cfg.window)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    step_lp = _step_log_prob(policy, trajs, lang)
    lengths = [t.length for t in trajs]
    history: list[dict[str, float]] = []
    for _ in range(cfg.epochs):
        order = rng.permutation(len(pairs))
        for s in range(0, len(pairs), cfg.batch_pairs):
            batch = [pairs[i] for i in order[s:s + cfg.batch_pairs]]
            history.append(tpo_step(step_lp, lengths, batch, ref, params, opt, cfg))
    policy.zero_grad(set_to_none=True)
    for i, h in enumerate(history):
        run.log(step0 + i + 1, **{f"tpo/{k}": v for k, v in h.items()})
    keys = history[0].keys()
    first, last = history[: max(1, len(history) // 4)], history[-max(1, len(history) // 4):]
    return {"steps": len(history),
            **{f"{k}_first": float(np.mean([h[k] for h in first])) for k in keys},
            **{f"{k}_last": float(np.mean([h[k] for h in last])) for k in keys}}


def _log_eval(run: Run, step: int, row: dict[str, Any]) -> None:
    run.log(step, **{f"eval/{k}": row[k] for k in ("mean_success_rate", "mean_length", "mean_r_ext",
                                                    "mean_violation_rate") if row.get(k) is not None},
            **{f"eval/success/{e}": r["success_rate"] for e, r in row["per_task"].items()})


def summarize(history: list[dict[str, Any]], cfg: GRAPEConfig) -> dict[str, Any]:
    """Per-iteration figures and the changes from the SFT policy to the last iteration."""
    first, last = history[0], history[-1]
    out: dict[str, Any] = {
        "objective": cfg.objective,
        "iterations": history,
        "success_per_iteration": [h["mean_success_rate"] for h in history],
        "length_per_iteration": [h["mean_length"] for h in history],
        "mean_success_sft": first["mean_success_rate"],
        "mean_success_final": last["mean_success_rate"],
        "mean_success_gain": last["mean_success_rate"] - first["mean_success_rate"],
        "mean_length_sft": first["mean_length"],
        "mean_length_final": last["mean_length"],
    }
    if first.get("mean_violation_rate") is not None:
        out["violation_rate_per_iteration"] = [h["mean_violation_rate"] for h in history]
        out["violation_rate_sft"], out["violation_rate_final"] = first["mean_violation_rate"], last["mean_violation_rate"]
    return out


def results_table(results: dict[str, Any], title: str) -> str:
    hist = results["iterations"]
    envs = list(hist[0]["per_task"])
    lines = [f"# {title}", "", "| task | " + " | ".join(f"iter {h['iteration']}" for h in hist) + " |",
             "|---|" + "---|" * len(hist)]
    for e in envs:
        lines.append(f"| {e} | " + " | ".join(f"{h['per_task'][e]['success_rate']:.2f}" for h in hist) + " |")
    lines.append("| **mean success** | " + " | ".join(f"**{h['mean_success_rate']:.2f}**" for h in hist) + " |")
    lines.append("| mean length | " + " | ".join(f"{h['mean_length']:.1f}" for h in hist) + " |")
    if hist[0].get("mean_violation_rate") is not None:
        lines.append("| keep-out violations | " + " | ".join(f"{h['mean_violation_rate']:.2f}" for h in hist) + " |")
    lines += ["", f"Mean success gain over SFT: {results['mean_success_gain']:+.2f}."]
    return "\n".join(lines) + "\n"
