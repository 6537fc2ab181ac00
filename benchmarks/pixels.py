"""Pixels that learn: learner throughput from camera images, and the off-policy methods from pixels.

    python benchmarks/pixels.py throughput [--rounds 3] [--seconds 20]
    python benchmarks/pixels.py hil-serl [--steps 30000] [--work runs/bench-pixels]
    python benchmarks/pixels.py conrft [--online-steps 15000]
    python benchmarks/pixels.py rlpd [--steps 20000] [--seeds 3]
    python benchmarks/pixels.py shift [--seeds 5] [--variants off on]

``throughput``: learner updates/s of HIL-SERL's SAC (two LayerNorm critics, batch 256, two
critic steps per actor step, grasp critic) on panda/pick-cube observations, each update
sampled from a filled replay buffer and moved to tensors as the runtime does:

- ``state``: proprio + cube position (21-d), the privileged-state baseline;
- ``pixels_cached``: front + wrist 128 px through the frozen EfficientNet-Lite0, tokens
  stored in the replay (float16) and only the trainable layers run (spatial embeddings,
  projection, critics, actor), with and without the feature-grid shift;
- ``pixels_uncached``: the same config with the frames in the replay, the encoder run on every
  minibatch image (what the learner did before the cache, less one encoder pass: the online
  and target critics now share the next observation's tokens).

All variants run in one process, interleaved round by round; the median per variant is kept.
``pixel_to_state_update_ratio`` is pixels_cached / state.

``hil-serl``: the flagship run from cameras (configs/hil-serl-pick-cube.yaml: front + wrist
128 px + proprio, no object pose), its classifier trained first as in
benchmarks/hil_serl_pick_cube.py. Every stage is cached under ``--work``.

``conrft``: ConRFT on pick-cube from the same cameras, SFT -> offline -> online, with
benchmarks/conrft_bench.py's protocol (success and episode length, policy alone, 50 episodes).

``rlpd``: RLPD on Meta-World drawer-open from the corner + gripper cameras and proprio
(configs/rlpd-metaworld-pixels.yaml), scripted demos encoded once as they load; success at
``--steps`` env steps, per seed.

``shift``: learning with the feature-grid shift on against off, everything else the demo's
setup (configs/demo.yaml: HIL-SERL on pick-cube from the front + wrist cameras, 20 demos, the
simulated human, 7,000 env steps), run in process (``runtime=inprocess``: exactly
``sac.utd`` critic steps per env step, so the schedule does not depend on how loaded the
machine is and runs can share it); per seed and variant, scored with vlarl.eval.protocol.

Results are merged into benchmarks/results/pixels.json and .md (each section keeps the
command that produced it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

RESULTS = Path(__file__).parent / "results"
CAMERAS = {"front": (128, 128, 3), "wrist": (128, 128, 3)}
PROPRIO, OBJECT, ACTION = 18, 3, 4


def _sac_config(**overrides):
    import dataclasses

    from vlarl.recipes.hil_serl import HILSERLConfig

    return dataclasses.replace(HILSERLConfig().sac, **overrides)


def _filled_buffer(state_dim: int, frames: dict | None, tokens: dict | None, n: int, seed: int):
    """A replay of ``n`` random transitions in 100-step episodes (contents do not change the cost)."""
    import numpy as np

    from vlarl.data.replay import ReplayBuffer

    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(n + n // 100 + 2, state_dim, ACTION, frames, seed=seed, features=tokens)

    def obs():
        return {"state": rng.standard_normal(state_dim).astype(np.float32),
                "pixels": {c: rng.integers(0, 256, s, dtype=np.uint8) for c, s in (frames or {}).items()},
                "features": {c: rng.standard_normal(s).astype(np.float16) for c, s in (tokens or {}).items()}}

    for k in range(n):
        if k % 100 == 0:
            buf.start_episode(obs())
        buf.add(rng.uniform(-1, 1, ACTION).astype(np.float32), float(rng.random() < 0.1), obs(), False,
                truncated=k % 100 == 99)
    return buf


class Variant:
    """One learner (agent, optimisers, replay) whose updates can be timed."""

    def __init__(self, name: str, obs: str, buffer_size: int, **sac) -> None:
        import torch

        from vlarl.algos.sac import SACAgent, SACLearner

        self.name, self.obs = name, obs
        self.cfg = _sac_config(**sac)
        cameras = CAMERAS if obs == "pixels" else None
        state_dim = PROPRIO if obs == "pixels" else PROPRIO + OBJECT
        self.agent = SACAgent(self.cfg, state_dim, ACTION, cameras)
        self.learner = SACLearner(self.agent)
        encoder = self.agent.critic.pixels.frame_encoder() if self.agent.critic.pixels is not None else None
        tokens = encoder.shapes if encoder is not None else None
        frames = cameras if cameras is not None and encoder is None else None
        self.buffer = _filled_buffer(state_dim, frames, tokens, buffer_size, seed=0)
        self.gen = torch.Generator().manual_seed(0)
        self.augment = self.cfg.augment and cameras is not None
        self.rates: list[float] = []

    def update(self) -> None:
        from vlarl.algos.sac import to_torch

        sample = self.buffer.sample(self.cfg.batch_size, self.cfg.critic_steps_per_actor_step())
        self.learner.update(to_torch(sample, "cpu", self.augment, self.gen, self.cfg.feature_shift))

    def time(self, seconds: float) -> float:
        self.update()  # warm-up: allocator, first-call costs
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < seconds:
            self.update()
            n += 1
        rate = n / (time.perf_counter() - t0)
        self.rates.append(rate)
        return rate


def throughput(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kernels = args.spatial_kernels
    run = {"spatial_kernels": kernels, "feature_pool": args.feature_pool, "augment": False}  # the pixel runs' head
    variants = [
        Variant("state", "state", 20_000),
        Variant("pixels_cached", "pixels", 20_000, **run),
        Variant("pixels_cached_shift", "pixels", 20_000, **{**run, "augment": True}),
        Variant("pixels_cached_grid8", "pixels", 20_000, **{**run, "feature_pool": 1}),
        Variant("pixels_cached_grid8_flatten", "pixels", 20_000, **{**run, "feature_pool": 1, "spatial_kernels": 0}),
        Variant("pixels_uncached", "pixels", 2_000, **run, cache_features=False),
    ]
    for r in range(args.rounds):
        for v in variants:
            rate = v.time(args.seconds if v.name != "pixels_uncached" else max(args.seconds, 1.0))
            print(f"round {r}: {v.name:24s} {rate:8.3f} updates/s", flush=True)
    med = {v.name: statistics.median(v.rates) for v in variants}
    rates = {v.name: v.rates for v in variants}
    per_transition = {v.name: v.buffer.bytes_per_frame for v in variants}
    return {
        "command": "python benchmarks/pixels.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        "config": {"ensemble": variants[0].cfg.ensemble, "actor_every": variants[0].cfg.critic_steps_per_actor_step(),
                   "batch_size": variants[0].cfg.batch_size, "encoder": variants[1].cfg.encoder,
                   "spatial_kernels": kernels, "feature_pool": args.feature_pool, "augment": False,
                   "cameras": {c: list(s) for c, s in CAMERAS.items()}},
        "updates_per_s": med,
        "pixel_to_state_update_ratio": med["pixels_cached"] / med["state"],
        "pixel_to_state_update_ratio_shift": med["pixels_cached_shift"] / med["state"],
        "uncached_pixel_to_state_update_ratio": med["pixels_uncached"] / med["state"],
        "cached_over_uncached": med["pixels_cached"] / med["pixels_uncached"],
        "round_ratios": [p / q for p, q in zip(rates["pixels_cached"], rates["state"])],
        "bytes_per_transition": per_transition,
    }


def hil_serl(args) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from hil_serl_pick_cube import classifier_stage

    from vlarl.recipes.hil_serl import HILSERLConfig, train_hil_serl
    from vlarl.runtime import Run, load_config

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    classifier = classifier_stage(work, args.classifier_episodes)
    run_dir = work / "hil-serl-pixels"
    overrides = [f"steps={args.steps}", f"classifier={work / 'classifier'}", f"run_dir={run_dir}",
                 f"eval_every={args.eval_every}", *args.set]
    if (run_dir / "config.yaml").exists():
        results = train_hil_serl(resume=Run.resume(run_dir, HILSERLConfig), progress=False)
    else:
        cfg = load_config(HILSERLConfig, "configs/hil-serl-pick-cube.yaml", overrides)
        results = train_hil_serl(cfg, progress=False)
    curve = [{"step": e["step"], "success": e["success"]} for e in results["evals"]]
    plot = RESULTS / "pixels_hil_serl.png"
    shutil.copyfile(results["plot"], plot)
    interventions = _windowed(results["episodes"], "intervention_rate")
    return {
        "command": "python benchmarks/pixels.py " + " ".join(sys.argv[1:]),
        "final_success": results["final_success"], "final_ci95": results["final_ci95"],
        "env_steps": results["env_steps"], "updates": results["updates"],
        "wall_clock_min": results["wall_clock_min"], "obs_keys": results["obs_keys"],
        "bytes_per_transition": results["bytes_per_transition"], "actor_hz": results["actor_hz"],
        "intervention_rate": results["intervention_rate"], "resumed_from": results["resumed_from"],
        "classifier": {k: classifier["test"][k] for k in ("precision", "recall", "frames")},
        "success_curve": curve, "intervention_curve": interventions, "plot": str(plot),
    }


def conrft(args) -> dict:
    """ConRFT's SFT -> offline -> online on pick-cube from the cameras (conrft_bench's protocol)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import conrft_bench

    ns = argparse.Namespace(demos=20, offline_steps=args.offline_steps, online_steps=args.online_steps, beta_end=0.2,
                            eval_episodes=50, curve_episodes=10, eval_every=args.eval_every, seed=0, control_hz=10.0,
                            work=args.work, set=["env.obs_mode=pixels", "env.image_size=128",
                                                 "env.cameras=[front,wrist]", *args.set])
    part = conrft_bench.run_env("panda/pick-cube", ns)
    run = json.loads((Path(args.work) / "panda_pick-cube" / "conrft" / "results.json").read_text())
    return {"command": "python benchmarks/pixels.py " + " ".join(sys.argv[1:]), **part,
            "obs_keys": run["obs_keys"], "bytes_per_transition": run["bytes_per_transition"],
            "actor_hz": run["actor_hz"]}


def rlpd(args) -> dict:
    """RLPD on drawer-open from the corner + gripper cameras (configs/rlpd-metaworld-pixels.yaml)."""
    from vlarl.eval.protocol import LAST_K, aggregate, plot_curves, run_score
    from vlarl.eval.protocol import curve as curve_of
    from vlarl.recipes.collect import CollectConfig, collect
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd
    from vlarl.runtime import finish_stage, load_config

    work = Path(args.work)
    demos = work / "demos"
    cfg_path = "configs/rlpd-metaworld-pixels.yaml"
    if not (demos / "meta" / "info.json").exists():
        env = load_config(RLPDConfig, cfg_path).env
        collect(CollectConfig(env=env, policy="scripted", episodes=args.demos, noise=0.1, seed=50_000, workers=1,
                              source="expert", out=str(demos)), progress=False)
    import torch

    torch.set_num_threads(args.threads)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        # a finished seed is read back, one stopped part-way (its checkpoints in run_dir) continues
        cfg = load_config(RLPDConfig, cfg_path, [f"demos={demos}", f"seed={seed}", f"run_dir={work / f'seed{seed}'}",
                                                 f"steps={args.steps}", *args.set])
        finish_stage(train_rlpd, RLPDConfig, cfg, progress=False)
    # every finished seed under --work, also those run by other processes (--first-seed)
    runs = []
    for done in work.glob("seed*/results.json"):
        r = json.loads(done.read_text())
        if r.get("final_success") is None:
            continue
        curve = [{"step": e["step"], "success": e["success"]} for e in r["evals"]]
        runs.append({"seed": int(done.parent.name.removeprefix("seed")), "final_success": r["final_success"],
                     "score": run_score(curve), "minutes": r["seconds"] / 60,
                     "bytes_per_transition": r["bytes_per_transition"], "curve": curve})
    runs.sort(key=lambda x: x["seed"])
    agg = aggregate([x["score"] for x in runs])
    episodes = load_config(RLPDConfig, cfg_path, args.set).eval_episodes
    plot_curves({"RLPD from cameras": curve_of([x["curve"] for x in runs])}, RESULTS / "pixels_rlpd.png",
                "RLPD, drawer-open from the corner + gripper cameras", episodes=episodes)
    return {"command": "python benchmarks/pixels.py " + " ".join(sys.argv[1:]), "env_steps": args.steps,
            "success": agg.mean, "success_ci95": list(agg.mean_ci95), "success_iqm": agg.iqm,
            "aggregate": agg.to_dict(), "describe": agg.describe(episodes=episodes),
            "score": f"mean of the last {LAST_K} evaluations per seed (vlarl.eval.protocol)",
            "per_seed": [x["score"] for x in runs], "final_success_per_seed": [x["final_success"] for x in runs],
            "seeds": len(runs), "eval_episodes": episodes, "runs": runs}


def shift(args) -> dict:
    """The feature-grid shift (``sac.augment``) on against off, seeds paired, the demo's setup."""
    import torch

    from vlarl.eval.protocol import LAST_K, aggregate, plot_curves, run_score
    from vlarl.eval.protocol import curve as curve_of
    from vlarl.recipes.demo import DemoConfig
    from vlarl.recipes.hil_serl import HILSERLConfig, train_hil_serl
    from vlarl.runtime import finish_stage, load_config

    def demo_run(*overrides: str) -> HILSERLConfig:
        """configs/demo.yaml's HIL-SERL run with ``overrides`` (its own keys)."""
        base = ["runtime=inprocess", f"learner_threads={args.threads}", f"eval_every={args.eval_every}",
                f"final_eval_episodes={args.final_episodes}", "video=false", "save_buffer=false"]
        return load_config(DemoConfig, "configs/demo.yaml",
                           [f"hil_serl.{o}" for o in (*base, *overrides, *args.set)]).hil_serl

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for variant in args.variants:
            cfg = demo_run(f"sac.augment={'true' if variant == 'on' else 'false'}", f"seed={seed}",
                           f"run_dir={work / variant / f'seed{seed}'}")
            finish_stage(train_hil_serl, HILSERLConfig, cfg, progress=False)
    variants: dict[str, list[dict]] = {}
    for variant in ("off", "on"):
        for done in sorted((work / variant).glob("seed*/results.json")):
            r = json.loads(done.read_text())
            if r.get("partial") or r.get("final_success") is None:
                continue
            curve = [{"step": e["step"], "success": e["success"]} for e in r["evals"]]
            variants.setdefault(variant, []).append({
                "seed": int(done.parent.name.removeprefix("seed")), "score": run_score(curve),
                "final_success": r["final_success"], "updates": r["updates"],
                "minutes": r["wall_clock_min"], "curve": curve})
    cfg = demo_run()
    argv = sys.argv[1:]
    if "--status" in argv:  # the status is written beside the command, not inside it
        del argv[argv.index("--status"):argv.index("--status") + 2]
    out: dict = {"command": "python benchmarks/pixels.py " + " ".join(argv),
                 "setup": f"configs/demo.yaml's run in process, {cfg.steps} env steps, feature_shift "
                          f"{cfg.sac.feature_shift} cell of the {128 // 16 // cfg.sac.feature_pool}-cell grid",
                 "score": f"mean of the last {LAST_K} evaluations per seed (vlarl.eval.protocol)",
                 "eval_episodes": cfg.eval_episodes, "final_eval_episodes": cfg.final_eval_episodes,
                 **({"status": args.status} if args.status else {})}
    for variant, runs in variants.items():
        runs.sort(key=lambda x: x["seed"])
        agg = aggregate([x["score"] for x in runs])
        final = aggregate([x["final_success"] for x in runs])
        out[variant] = {"aggregate": agg.to_dict(), "describe": agg.describe(episodes=cfg.eval_episodes),
                        "final": final.to_dict(), "runs": runs}
    paired = {x["seed"]: x["score"] for x in variants.get("off", [])}
    diffs = [x["score"] - paired[x["seed"]] for x in variants.get("on", []) if x["seed"] in paired]
    if diffs:
        d = aggregate(diffs)
        out["on_minus_off"] = {"mean": d.mean, "mean_ci95": list(d.mean_ci95), "seeds": len(diffs)}
    plot_curves({f"shift {v}": curve_of([x["curve"] for x in runs], by_index=True) for v, runs in variants.items()},
                RESULTS / "pixels_shift.png", "pick-cube from cameras, grid shift",
                episodes=cfg.eval_episodes)
    return out


def _windowed(episodes: list[dict], key: str, window: int = 20) -> list[dict]:
    out = []
    for i in range(window, len(episodes) + 1, window):
        chunk = episodes[i - window:i]
        out.append({"step": chunk[-1]["step"], key: sum(e[key] for e in chunk) / window})
    return out


def _write(section: str, figures: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "pixels.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[section] = figures
    if section == "throughput":
        for key in ("pixel_to_state_update_ratio", "uncached_pixel_to_state_update_ratio"):
            data[key] = figures[key]
    path.write_text(json.dumps(data, indent=2, default=float))
    (RESULTS / "pixels.md").write_text(_markdown(data))


def _markdown(data: dict) -> str:
    lines = ["# Pixels that learn", ""]
    t = data.get("throughput")
    if t:
        lines += ["## Learner throughput from cameras", "", f"`{t['command']}` on {t['machine']}.",
                  f"HIL-SERL's SAC: E={t['config']['ensemble']}, {t['config'].get('actor_every', t['config'].get('utd'))} critic steps per actor step, "
                  f"batch {t['config']['batch_size']}, {t['config']['encoder']} frozen, "
                  f"{t['config']['spatial_kernels']} spatial kernels, grid pooled by {t['config']['feature_pool']}; "
                  "front + wrist 128 px. grid8: the stride-16 grid unpooled (8 x 8 cells); flatten: a linear "
                  "projection of every token instead of spatial embeddings; shift: the feature-grid shift on.", "",
                  "| learner | updates/s (median) | / state | replay bytes per transition |", "|---|---|---|---|"]
        for name, rate in t["updates_per_s"].items():
            lines.append(f"| {name} | {rate:.3f} | {rate / t['updates_per_s']['state']:.3f} | "
                         f"{t['bytes_per_transition'][name]} |")
        lines += ["", f"- **pixel_to_state_update_ratio** (cached, no shift): {t['pixel_to_state_update_ratio']:.3f} "
                  f"(target >= 0.5); with the feature-grid shift {t['pixel_to_state_update_ratio_shift']:.3f}",
                  f"- uncached (encoder on every minibatch image): {t['uncached_pixel_to_state_update_ratio']:.4f}; "
                  f"cached / uncached: {t['cached_over_uncached']:.0f}x"]
        if t.get("round_ratios"):  # the same ratio round by round: how much the machine drifts within a run
            lines.append("- pixels_cached / state round by round: " + ", ".join(f"{x:.2f}" for x in t["round_ratios"]))
        lines.append("")
    h = data.get("hil_serl_pixels")
    if h:
        lines += ["## HIL-SERL from cameras (panda/pick-cube)", "", f"`{h['command']}`", "",
                  f"- final_success (policy alone, 50 episodes, env's success): {h['final_success']:.2f} "
                  f"(95% CI {h['final_ci95'][0]:.2f}-{h['final_ci95'][1]:.2f}) after {h['env_steps']} env steps, "
                  f"{h['updates']} updates, {h['wall_clock_min']:.1f} min",
                  f"- obs_keys: {h['obs_keys']}", f"- bytes_per_transition: {h['bytes_per_transition']}",
                  f"- actor_hz: {h['actor_hz']:.1f}, intervention rate over the run {h['intervention_rate']:.3f}",
                  f"- reward classifier (held-out episodes): {h['classifier']}",
                  *([f"- status: {h['status']}"] if "status" in h else []),
                  *([f"- {h['note']}"] if "note" in h else []),
                  "- curves: `pixels_hil_serl.png` (success of the policy alone, intervention rate)", "",
                  "| env steps | success |", "|---|---|"]
        lines += [f"| {e['step']} | {e['success']:.2f} |" for e in h["success_curve"]]
        lines.append("")
    c = data.get("conrft_pixels")
    if c:
        status = f" — status: {c['status']}" if "status" in c else ""
        lines += ["## ConRFT from cameras (panda/pick-cube)", "", f"`{c['command']}`{status}", "",
                  "| stage | success (50 episodes) | mean episode length |", "|---|---|---|"]
        lines += [f"| {k} | {c[k]['success']:.2f} (95% CI {c[k]['ci95'][0]:.2f}-{c[k]['ci95'][1]:.2f}) | "
                  f"{c[k]['episode_length']:.1f} |" for k in ("sft", "offline", "online") if k in c]
        if "bytes_per_transition" in c:
            lines += ["", f"- observed: {', '.join(f'{k} {v}' for k, v in c['obs_keys'].items())}",
                      f"- bytes_per_transition: {c['bytes_per_transition']}; actor {c['actor_hz']:.1f} Hz "
                      f"(paced at 10 Hz); offline + online stages {c['conrft_wall_min']:.0f} min on 2 cores, shared with test runs for much of it"]
        lines.append("")
    r = data.get("rlpd_pixels")
    if r:
        status = f" — status: {r['status']}" if "status" in r else ""
        lines += ["## RLPD from cameras (metaworld/drawer-open)", "", f"`{r['command']}`{status}", ""]
        if r.get("describe"):
            per_seed = ", ".join(f"{x:.2f}" for x in r["per_seed"])
            last = ", ".join(f"{x:.2f}" for x in r["final_success_per_seed"])
            minutes = ", ".join(f"{x['minutes']:.0f}" for x in r["runs"])
            lines += [f"- success at {r['env_steps']} env steps, {r['score']}: {r['describe']}",
                      f"- per seed: {per_seed}; the last evaluation alone: {last}",
                      f"- bytes_per_transition: {r['runs'][0]['bytes_per_transition']}; minutes per seed: {minutes}",
                      "- curves: `pixels_rlpd.png`"]
        elif r.get("success") is not None:
            lines += [f"- success at {r['env_steps']} env steps: {r['success']:.2f} (per seed {r['per_seed']})",
                      f"- bytes_per_transition: {r['runs'][0]['bytes_per_transition']}"]
        for run in r["runs"]:
            lines.append(f"- seed {run['seed']} curve ({r.get('eval_episodes', 10)}-episode evals): "
                         + ", ".join(f"{e['step']}: {e['success']:.2f}" for e in run["curve"]))
        lines.append("")
    sh = data.get("shift_learning")
    if sh:
        status = f" — status: {sh['status']}" if "status" in sh else ""
        lines += ["## Learning with the feature-grid shift on and off (panda/pick-cube from cameras)", "",
                  f"`{sh['command']}`{status}", "", (f"{sh['setup']}; score: {sh['score']}; the final evaluation "
                                                     f"{sh['final_eval_episodes']} episodes, policy alone."), "",
                  "| feature-grid shift | score | final evaluation (mean, 95% CI) | per seed (score) | updates |",
                  "|---|---|---|---|---|"]
        for variant in ("off", "on"):
            v = sh.get(variant)
            if v:
                f, scores = v["final"], ", ".join(f"{x['score']:.2f}" for x in v["runs"])
                lines.append(f"| {variant} | {v['describe']} | {f['mean']:.2f} ({f['mean_ci95'][0]:.2f}-"
                             f"{f['mean_ci95'][1]:.2f}) | {scores} | "
                             f"{v['runs'][0]['updates']} |")
        if "on_minus_off" in sh:
            d = sh["on_minus_off"]
            lines += ["", (f"- on - off, paired by seed: {d['mean']:+.2f} (95% CI {d['mean_ci95'][0]:+.2f} to "
                           f"{d['mean_ci95'][1]:+.2f}, {d['seeds']} seeds)")]
        for variant in ("off", "on"):
            for run in sh.get(variant, {}).get("runs", []):
                lines.append(f"- shift {variant}, seed {run['seed']} curve: "
                             + ", ".join(f"{e['step']}: {e['success']:.2f}" for e in run["curve"])
                             + f"; final {run['final_success']:.2f}, {run['minutes']:.0f} min")
        lines += ["- curves: `pixels_shift.png`", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--seconds", type=float, default=20.0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--spatial-kernels", type=int, default=8)
    t.add_argument("--feature-pool", type=int, default=2)
    h = sub.add_parser("hil-serl")
    h.add_argument("--steps", type=int, default=30_000)
    h.add_argument("--eval-every", type=int, default=2_500)
    h.add_argument("--classifier-episodes", type=int, default=40)
    h.add_argument("--work", default="runs/bench-pixels")
    h.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    c = sub.add_parser("conrft")
    c.add_argument("--offline-steps", type=int, default=2000)
    c.add_argument("--online-steps", type=int, default=15000)
    c.add_argument("--eval-every", type=int, default=2500)
    c.add_argument("--work", default="runs/bench-pixels-conrft")
    c.add_argument("--set", nargs="*", default=[])
    r = sub.add_parser("rlpd")
    r.add_argument("--steps", type=int, default=20_000)
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed .. first-seed+seeds-1 (to run seeds side by side as separate processes)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--demos", type=int, default=10)
    r.add_argument("--work", default="runs/bench-pixels-rlpd")
    r.add_argument("--set", nargs="*", default=[])
    s = sub.add_parser("shift")
    s.add_argument("--seeds", type=int, default=5)
    s.add_argument("--first-seed", type=int, default=0)
    s.add_argument("--variants", nargs="+", choices=("off", "on"), default=["off", "on"],
                   help="which to train here (all finished ones under --work are reported)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--eval-every", type=int, default=1750)
    s.add_argument("--final-episodes", type=int, default=20)
    s.add_argument("--work", default="runs/bench-pixels-shift")
    s.add_argument("--set", nargs="*", default=[])
    s.add_argument("--status", help="how the runs were made, written beside the figures")
    args = p.parse_args()
    if args.what == "throughput":
        _write("throughput", throughput(args))
    elif args.what == "hil-serl":
        _write("hil_serl_pixels", hil_serl(args))
    elif args.what == "conrft":
        _write("conrft_pixels", conrft(args))
    elif args.what == "rlpd":
        _write("rlpd_pixels", rlpd(args))
    else:
        _write("shift_learning", shift(args))
    print((RESULTS / "pixels.md").read_text())


if __name__ == "__main__":
    main()
