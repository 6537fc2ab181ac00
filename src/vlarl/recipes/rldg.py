"""RLDG: RL specialists distilled into a generalist VLA.

    specialists   one RL policy per task, from state: the RLPD recipe (scripted demos in its
                  offline buffer) or the HIL-SERL recipe (simulated human); or finished runs
                  given in ``specialist_runs``
    RL data       each specialist rolled out deterministically; only successful episodes
                  are kept, recorded as the generalist sees them (proprio and camera images,
                  ``data_env``) with their source: ``policy`` and the specialist's run
    demo data     the scripted expert (with ``demo_noise``) recorded the same way, successes only
    generalists   the Step 2 VLA trained by SFT (recipes/sft.py) for each comparison in
                  ``generalists``: ``rl:N``, ``demos:N`` or ``mix:N`` (N episodes per task; a
                  mix takes ceil(N/2) RL and floor(N/2) demo episodes), each evaluated on every
                  task over the same start states

Every stage is skipped when its output is complete, so ``--resume`` continues where a run
stopped (a dataset being filled continues from its next start state).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vlarl.algos.sac import obs_to_torch
from vlarl.envs.spaces import env_dims
from vlarl.errors import VlarlError, unknown
from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
from vlarl.recipes.hil_serl import Agent, HILSERLConfig
from vlarl.recipes.rlpd import RLPDConfig
from vlarl.recipes.sft import SFTConfig
from vlarl.runtime import Run, finish_stage, latest_checkpoint, load_checkpoint, load_config, seed_everything
from vlarl.runtime.config import check_ranges, ranged

SPECIALISTS = ("rlpd", "hil-serl")
DATA_KINDS = ("rl", "demos", "mix")


def _default_rlpd() -> RLPDConfig:
    return RLPDConfig(env=EnvConfig(obs_mode="state"), steps=10_000,
                      eval_every=2_500, eval_episodes=10, eval_envs=1, save_buffer=False)


def _default_hil_serl() -> HILSERLConfig:
    return HILSERLConfig(env=EnvConfig(obs_mode="state"), runtime="inprocess", steps=10_000, eval_every=2_500,
                         final_eval_episodes=20, video=False)


@dataclass
class RLDGConfig:
    tasks: list[str] = field(default_factory=lambda: ["toy/reach"])
    specialist: str = ranged("rlpd", choices=SPECIALISTS)  # the recipe that trains each task's specialist
    specialist_runs: dict[str, str] = field(default_factory=dict)  # task -> a finished run of that recipe
    rlpd: RLPDConfig = field(default_factory=_default_rlpd)  # template; env.name and demos are set per task
    hil_serl: HILSERLConfig = field(default_factory=_default_hil_serl)  # template; env.name is set per task
    specialist_demos: int = ranged(10, ge=1)  # scripted demos (from state) in RLPD's offline buffer
    # What the generalist sees (name unused): proprio + these cameras, in episodes this long.
    data_env: EnvConfig = field(default_factory=lambda: EnvConfig(name="", obs_mode="pixels"))
    demo_noise: float = ranged(0.1, ge=0)
    generalists: list[str] = field(default_factory=lambda: ["rl:10", "demos:10", "mix:10"])
    attempts_per_episode: float = ranged(4.0, ge=1)  # give up on a task's data after this many attempts per wanted episode
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=1000, video_episodes=1))
    eval_episodes: int = ranged(20, ge=1)
    eval_envs: int = ranged(2, ge=1)
    seed: int = ranged(0, ge=0)
    run_dir: str = "runs/rldg"
    device: str = "auto"


def parse_generalist(spec: str) -> tuple[str, int]:
    """``"rl:45"`` -> ("rl", 45)."""
    kind, _, count = spec.partition(":")
    if kind not in DATA_KINDS or not count.isdigit() or int(count) < 1:
        raise VlarlError(f"generalists: {spec!r} is not DATA:N with DATA one of {', '.join(DATA_KINDS)} and N >= 1")
    return kind, int(count)


def episodes_per_source(generalists: list[str]) -> dict[str, int]:
    """Episodes per task each source must provide for every comparison asked for."""
    need = {"rl": 0, "demos": 0}
    for spec in generalists:
        kind, n = parse_generalist(spec)
        if kind == "mix":
            need["rl"], need["demos"] = max(need["rl"], math.ceil(n / 2)), max(need["demos"], n // 2)
        else:
            need[kind] = max(need[kind], n)
    return need


def _check(cfg: RLDGConfig) -> None:
    from vlarl.envs.registry import ENV_NAMES

    check_ranges(cfg, "rldg")
    if not cfg.tasks:
        raise VlarlError("tasks: at least one env name is needed")
    for task in [*cfg.tasks, *cfg.specialist_runs]:
        if task not in ENV_NAMES:
            raise VlarlError(unknown("task", task, ENV_NAMES))
    for task, path in cfg.specialist_runs.items():
        if task not in cfg.tasks:
            raise VlarlError(f"specialist_runs: {task!r} is not one of tasks {cfg.tasks}")
        if not (Path(path) / "config.yaml").exists():
            raise VlarlError(f"specialist_runs.{task}: {path} is not a run directory (no config.yaml)")
    if not cfg.generalists:
        raise VlarlError("generalists: at least one comparison (e.g. rl:10) is needed")
    episodes_per_source(cfg.generalists)
    if cfg.data_env.obs_mode != "pixels":
        raise VlarlError(f"data_env.obs_mode: the generalist learns from pixels; got {cfg.data_env.obs_mode!r}")


# --- specialists --------------------------------------------------------------------------
def _slug(task: str) -> str:
    return task.replace("/", "_")


def train_specialist(cfg: RLDGConfig, task: str, root: Path, progress: bool = True) -> Path:
    """Train (or resume, or reuse) ``task``'s specialist under ``root``; returns its run directory."""
    if task in cfg.specialist_runs:
        return Path(cfg.specialist_runs[task])
    run_dir = root / _slug(task)
    if (run_dir / "results.json").exists():  # finished: not even its demos are checked again
        return run_dir
    if cfg.specialist == "rlpd":
        env = replace(cfg.rlpd.env, name=task)
        demos = root / "demos" / _slug(task)
        collect(CollectConfig(env=env, episodes=cfg.specialist_demos, noise=cfg.demo_noise, seed=cfg.seed + 50_000,
                              out=str(demos), only_successful=True), progress=progress)
        from vlarl.recipes.rlpd import train_rlpd

        sub_cfg: Any = replace(cfg.rlpd, env=env, demos=str(demos), seed=cfg.seed, run_dir=str(run_dir),
                               device=cfg.device)
        train: Callable[..., dict[str, Any]] = train_rlpd
        config_cls: type = RLPDConfig
    else:
        from vlarl.recipes.hil_serl import train_hil_serl

        sub_cfg = replace(cfg.hil_serl, env=replace(cfg.hil_serl.env, name=task), seed=cfg.seed,
                          run_dir=str(run_dir), device=cfg.device)
        train, config_cls = train_hil_serl, HILSERLConfig
    finish_stage(train, config_cls, sub_cfg, progress)
    return run_dir


@dataclass
class Specialist:
    """A trained specialist ready to act: ``make_env(seed)`` builds its env stack with a
    ``PixelsRecorder`` innermost; ``act(obs)`` is its deterministic action."""

    run_dir: Path
    recipe: str
    make_env: Callable[[int], Any]
    act: Callable[[dict[str, Any]], np.ndarray]


def _rollout_options(env: EnvConfig, data_env: EnvConfig) -> EnvConfig:
    """The specialist's own env, filmed with the data env's cameras, for the data's episode
    length, and ended at success (an episode is kept up to its first success)."""
    if "pixels" in env.obs_mode and (env.cameras != data_env.cameras or env.image_size != data_env.image_size):
        raise VlarlError(f"a pixel specialist sees cameras {env.cameras} at {env.image_size} px; data_env must match, "
                         f"got {data_env.cameras} at {data_env.image_size} px")
    return replace(env, cameras=data_env.cameras, image_size=data_env.image_size,
                   episode_length=data_env.episode_length,
                   options={**env.options, "terminate_on_success": True})


def load_specialist(run_dir: str | Path, recipe: str, data_env: EnvConfig, device: torch.device | str = "cpu") -> Specialist:
    """The latest checkpoint of an RLPD or HIL-SERL run, acting deterministically."""
    from vlarl.algos.sac import SACAgent
    from vlarl.envs import make
    from vlarl.envs.wrappers import PixelsRecorder

    run_dir = Path(run_dir)
    agent: Agent
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise VlarlError(f"specialist {run_dir}: no checkpoint under {run_dir / 'checkpoints'}")
    if recipe == "rlpd":
        rlpd_cfg = load_config(RLPDConfig, run_dir / "config.yaml")
        env_cfg = _rollout_options(rlpd_cfg.env, data_env)

        def make_env(seed: int):
            return PixelsRecorder(make(env_cfg.name, **env_cfg.kwargs()))

        probe = make(rlpd_cfg.env.name, **rlpd_cfg.env.kwargs())
        agent = SACAgent(rlpd_cfg.sac, *env_dims(probe))
        probe.close()
    elif recipe == "hil-serl":
        from vlarl.envs.wrappers import insert_innermost
        from vlarl.recipes.hil_serl import agent_for
        from vlarl.recipes.hil_serl import make_env as hil_env

        hil_cfg = load_config(HILSERLConfig, run_dir / "config.yaml")
        hil_cfg = replace(hil_cfg, env=_rollout_options(hil_cfg.env, data_env))

        def make_env(seed: int):
            env, _ = hil_env(hil_cfg, seed, training=False)  # no human, no classifier: the policy alone
            return insert_innermost(env, PixelsRecorder)

        probe = make_env(0)
        agent = agent_for(hil_cfg, probe)
        probe.close()
    else:
        raise VlarlError(unknown("specialist", recipe, SPECIALISTS))
    device = torch.device(device)
    agent = agent.to(device)
    load_checkpoint(ckpt, {"agent": agent}, restore_rng=False)
    agent.eval()

    @torch.no_grad()
    def act(obs: dict[str, Any]) -> np.ndarray:
        return agent.act(obs_to_torch(obs, device, add_batch_dim=True), deterministic=True)[0].cpu().numpy()

    return Specialist(run_dir, recipe, make_env, act)


# --- data ---------------------------------------------------------------------------------
def keep_successes(env, act: Callable[[dict[str, Any]], np.ndarray], out: Path, episodes: int, max_attempts: int,
                   first_seed: int, source: str, meta: dict[str, Any], progress: bool = True,
                   reseed: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Roll ``act`` out in ``env`` (its innermost wrapper a ``PixelsRecorder``) from start
    states ``first_seed``, ``first_seed + 1``, ... and write only the successful episodes to
    ``out`` until it holds ``episodes`` of them or ``max_attempts`` were made in all. Each
    written episode records ``source``, its start seed and ``meta``. A dataset filled
    part-way continues after the last start state it holds; ``reseed(seed)`` (e.g. an expert's
    noise) runs before each attempt, so the data do not depend on where a run stopped."""
    from vlarl.data import EpisodeDataset, EpisodeWriter
    from vlarl.envs.wrappers import PixelsRecorder
    from vlarl.eval import run_episode

    recorder = env
    while not isinstance(recorder, PixelsRecorder):
        if not hasattr(recorder, "env"):
            raise VlarlError("keep_successes: the env stack has no PixelsRecorder")
        recorder = recorder.env
    base = env.unwrapped
    kept = EpisodeDataset(out).episodes if (out / "meta" / "info.json").exists() else []
    attempts = max((m.extra.get("attempt", -1) for m in kept), default=-1) + 1
    lengths = [m.length for m in kept]
    bar = tqdm(total=episodes, initial=len(kept), desc=f"{source} {meta.get('env', base.task)}", unit="ep", disable=not progress)
    with EpisodeWriter(out) as writer:
        while len(lengths) < episodes and attempts < max_attempts:
            seed = first_seed + attempts
            if reseed is not None:
                reseed(seed)
            if run_episode(env, act, seed=seed, keep_arrays=False).success:  # the recorder holds the arrays
                arrays = recorder.episode()
                writer.write_episode(arrays, base.task, base.instruction, source, True, seed=seed, attempt=attempts,
                                     **meta)
                lengths.append(len(arrays["action"]))
                bar.update(1)
            attempts += 1
    bar.close()
    return {"episodes": len(lengths), "attempts": attempts, "success_rate": len(lengths) / max(attempts, 1),
            "mean_length": float(np.mean(lengths)) if lengths else None}


def rl_data(cfg: RLDGConfig, task: str, specialist: Specialist, out: Path, episodes: int,
            progress: bool = True) -> dict[str, Any]:
    """Successful episodes of ``specialist`` on ``task`` (start states from seed 20_000)."""
    env = specialist.make_env(cfg.seed)
    try:
        return keep_successes(env, specialist.act, out, episodes, math.ceil(episodes * cfg.attempts_per_episode),
                              20_000 + cfg.seed, "policy", {"specialist": str(specialist.run_dir),
                              "specialist_recipe": specialist.recipe, "env": task, "env_options": cfg.data_env.kwargs()},
                              progress)
    finally:
        env.close()


def demo_data(cfg: RLDGConfig, task: str, out: Path, episodes: int, progress: bool = True) -> dict[str, Any]:
    """Successful episodes of the scripted expert on ``task``, recorded like the RL data (the
    same start states)."""
    from vlarl.envs import ScriptedExpert, make
    from vlarl.envs.wrappers import PixelsRecorder

    env_cfg = replace(cfg.data_env, name=task, obs_mode="state",
                      options={**cfg.data_env.options, "terminate_on_success": True})
    env = PixelsRecorder(make(task, **env_cfg.kwargs()))
    expert = ScriptedExpert(env, cfg.demo_noise)

    def reseed(seed: int) -> None:
        expert.rng = np.random.default_rng(seed)

    try:
        return keep_successes(env, expert, out, episodes, math.ceil(episodes * cfg.attempts_per_episode),
                              20_000 + cfg.seed, "expert", {"noise": cfg.demo_noise, "env": task,
                              "env_options": cfg.data_env.kwargs()}, progress, reseed)
    finally:
        env.close()


# --- the recipe -----------------------------------------------------------------------------
def generalist_datasets(kind: str, n: int, rl: list[str], demos: list[str]) -> tuple[list[str], list[int]]:
    """Dataset paths and per-dataset episode limits of one comparison."""
    if kind == "rl":
        return rl, [n] * len(rl)
    if kind == "demos":
        return demos, [n] * len(demos)
    return [*rl, *demos], [math.ceil(n / 2)] * len(rl) + [n // 2] * len(demos)


def data_dir(root: Path, source: str, task: str) -> Path:
    """Where the run at ``root`` keeps ``task``'s successful episodes from ``source`` (rl | demos)."""
    return root / "data" / source / _slug(task)


def generalist_sft(cfg: RLDGConfig, spec: str, root: Path) -> SFTConfig:
    """The SFT run of comparison ``spec`` (e.g. "mix:45") in the run at ``root``."""
    kind, n = parse_generalist(spec)
    rl, demos = ([str(data_dir(root, source, t)) for t in cfg.tasks] for source in ("rl", "demos"))
    datasets, limits = generalist_datasets(kind, n, rl, demos)
    return replace(cfg.sft, datasets=datasets, episodes_per_dataset=limits, seed=cfg.seed, device=cfg.device,
                   eval_episodes=cfg.eval_episodes, eval_envs=cfg.eval_envs,
                   run_dir=str(root / "generalists" / spec.replace(":", "-")))


def train_rldg(cfg: RLDGConfig | None = None, resume: Run | None = None, progress: bool = True) -> dict[str, Any]:
    from vlarl.recipes.sft import train_sft

    given = resume.config if resume is not None else cfg
    if given is not None:  # before a run directory is made
        _check(given)
    run, cfg = Run.start(cfg, resume)
    seed_everything(cfg.seed)
    need = episodes_per_source(cfg.generalists)
    results: dict[str, Any] = {"specialists": {}, "data": {}, "generalists": {}}
    t0 = time.perf_counter()
    for task in cfg.tasks:
        row: dict[str, Any] = {}
        if need["rl"]:
            spec_dir = train_specialist(cfg, task, run.path / "specialists", progress)
            done = spec_dir / "results.json"
            results["specialists"][task] = {"run": str(spec_dir), **_specialist_summary(done)}
            specialist = load_specialist(spec_dir, cfg.specialist, cfg.data_env)
            row["rl"] = rl_data(cfg, task, specialist, data_dir(run.path, "rl", task), need["rl"], progress)
            if row["rl"]["episodes"] < need["rl"]:
                raise VlarlError(f"{task}: the specialist {spec_dir} succeeded in {row['rl']['episodes']} of "
                                 f"{row['rl']['attempts']} attempts; {need['rl']} successful episodes are needed "
                                 f"(train it longer, or raise attempts_per_episode)")
        if need["demos"]:
            row["demos"] = demo_data(cfg, task, data_dir(run.path, "demos", task), need["demos"], progress)
        results["data"][task] = row
        run.log(len(results["data"]), **{f"data/{k}_success_rate/{task}": v["success_rate"] for k, v in row.items()})
    for spec in cfg.generalists:
        kind, n = parse_generalist(spec)
        sub_cfg = generalist_sft(cfg, spec, run.path)
        out = finish_stage(train_sft, SFTConfig, sub_cfg, progress)
        results["generalists"][spec] = {"data": kind, "episodes_per_task": n, "run": sub_cfg.run_dir,
                                        **generalist_summary(out)}
        run.log(len(results["generalists"]), **{f"success/{spec}": out["mean_success"]})
    results.update(comparison(results["generalists"]), seconds=time.perf_counter() - t0)
    run.write_results(results)
    (run.path / "results.md").write_text(results_table(results, f"RLDG ({run.path})"))
    run.close()
    return results


def _specialist_summary(path: Path) -> dict[str, Any]:
    """A finished RLPD or HIL-SERL run's last evaluation (both keep ``evals``)."""
    done = json.loads(path.read_text()) if path.exists() else {}
    last = (done.get("evals") or [{}])[-1]
    return {"success": last.get("success"), "mean_length": last.get("mean_length"), "env_steps": last.get("step")}


def generalist_summary(sft_results: dict[str, Any]) -> dict[str, Any]:
    """Mean success and episode length over tasks of one SFT run, and per task."""
    per_task = sft_results.get("per_task", {})
    lengths = [t["mean_length"] for t in per_task.values()]
    return {"success": sft_results.get("mean_success"), "episode_length": float(np.mean(lengths)) if lengths else None,
            "per_task": {e: {"success": t["success_rate"], "episode_length": t["mean_length"]} for e, t in per_task.items()}}


def comparison(generalists: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``rl_data`` / ``demo_data`` / ``mix_data``: episode count -> {success, episode_length, per_task}."""
    keys = {"rl": "rl_data", "demos": "demo_data", "mix": "mix_data"}
    out: dict[str, dict[str, Any]] = {v: {} for v in keys.values()}
    for g in generalists.values():
        out[keys[g["data"]]][str(g["episodes_per_task"])] = {k: g[k] for k in ("success", "episode_length", "per_task")}
    return out


def results_table(results: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "", "| generalist | data | episodes per task | mean success | mean episode length |",
             "|---|---|---|---|---|"]
    for spec, g in results["generalists"].items():
        lines.append(f"| {spec} | {g['data']} | {g['episodes_per_task']} | {g['success']:.2f} | {g['episode_length']:.1f} |")
    lines += ["", "| task | source | episodes | attempts | success rate | mean length |", "|---|---|---|---|---|---|"]
    for task, row in results["data"].items():
        for source, d in row.items():
            length = f"{d['mean_length']:.1f}" if d["mean_length"] is not None else "-"
            lines.append(f"| {task} | {source} | {d['episodes']} | {d['attempts']} | {d['success_rate']:.2f} | {length} |")
    return "\n".join(lines) + "\n"
