"""The HIL-SERL flagship on panda/pick-cube: reward classifier, simulated human, async actor.

    python benchmarks/hil_serl_pick_cube.py [--steps 30000] [--obs-mode state|pixels]
        [--pixel-steps 1500] [--classifier-episodes 40]

1. Labelled frames, front + wrist cameras at 128 px, episodes run past success (so lifted
   frames are plentiful): ``--classifier-episodes`` scripted episodes with noise 0.4 (mostly
   successes), half as many with noise 1.0 and as many random-action episodes (failures in
   poses an RL policy visits: a classifier trained on expert frames alone says "success" to
   states it never saw, and the policy learns to find them). Whole episodes are held out
   for precision / recall.
2. The classifier: frozen EfficientNet-Lite0 + small head (``vlarl reward-classifier train``).
3. The main run (``vlarl train hil-serl``): 20 scripted demos recorded through the same
   wrappers, simulated human whose budget decays over the first half of the run, reward and
   episode end from the classifier (3 positive frames in a row), end-effector-relative frame, one actor process beside the
   learner on this machine. ``final_success`` is the policy alone (no human) over 50 episodes,
   judged by the env's own success check, never the classifier.
4. ``actor_hz``: a short run with pixel observations (front + wrist, 128 px, frozen
   EfficientNet-Lite0 features for the policy, classifier on every step) while the learner
   trains on the same two cores.

Every stage caches its output under ``--work`` and is skipped when done, so an interrupted
benchmark continues; results go to benchmarks/results/hil_serl_pick_cube.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

RESULTS = Path(__file__).parent / "results"


def classifier_stage(work: Path, episodes: int) -> dict:
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
    from vlarl.recipes.reward_classifier import RewardClassifierConfig, train_reward_classifier

    run = work / "classifier"
    if (run / "results.json").exists():
        return json.loads((run / "results.json").read_text())
    env = EnvConfig(name="panda/pick-cube", obs_mode="pixels", image_size=128, cameras=["front", "wrist"],
                    episode_length=100, options={"terminate_on_success": False})
    parts = {"expert": ("scripted", 0.4, episodes, 0), "noisy": ("scripted", 1.0, episodes // 2, 10_000),
             "random": ("random", 0.0, episodes, 20_000)}
    data = []
    for name, (policy, noise, n, seed) in parts.items():
        data.append(str(work / f"classifier-data-{name}"))
        collect(CollectConfig(env=env, policy=policy, episodes=n, noise=noise, seed=seed, workers=2,
                              source="expert" if policy == "scripted" else "policy", out=data[-1]))
    return train_reward_classifier(RewardClassifierConfig(data=data, run_dir=str(run)))


def hil_config(work: Path, name: str, obs_mode: str, steps: int, eval_every: int):
    from vlarl.recipes.collect import EnvConfig
    from vlarl.recipes.hil_serl import HILSERLConfig, _default_sac

    sac = _default_sac()
    cfg = HILSERLConfig(env=EnvConfig(name="panda/pick-cube", obs_mode=obs_mode, image_size=128, episode_length=100),
                        sac=sac, demos=20, human="sim", reward="classifier", classifier=str(work / "classifier"),
                        steps=steps, eval_every=eval_every, eval_episodes=20, final_eval_episodes=50,
                        save_every=max(eval_every, 2500), run_dir=str(work / name))
    cfg.sim_human.decay_steps = max(1, steps // 2)
    if obs_mode == "pixels":
        cfg.sac.batch_size = 64  # CPU: a frozen EfficientNet on 2 x 128 px per sample dominates the update
        cfg.eval_every, cfg.final_eval_episodes, cfg.save_buffer = 0, 10, False
    return cfg


def run_stage(work: Path, name: str, obs_mode: str, steps: int, eval_every: int) -> dict:
    from vlarl.recipes.hil_serl import HILSERLConfig, train_hil_serl
    from vlarl.runtime import Run

    run = work / name
    done = run / "results.json"
    if done.exists() and "final_success" in json.loads(done.read_text()):
        return json.loads(done.read_text())
    if (run / "checkpoints").exists():
        return train_hil_serl(resume=Run.resume(run, HILSERLConfig))
    if run.exists():
        shutil.rmtree(run)
    return train_hil_serl(hil_config(work, name, obs_mode, steps, eval_every))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30_000)
    p.add_argument("--obs-mode", default="state", choices=["state", "pixels"])
    p.add_argument("--eval-every", type=int, default=2_500)
    p.add_argument("--pixel-steps", type=int, default=1_500, help="length of the pixel run that measures actor_hz")
    p.add_argument("--classifier-episodes", type=int, default=40)
    p.add_argument("--work", default="runs/bench-hil-serl")
    p.add_argument("--out", default="hil_serl_pick_cube")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    # what this file recorded last: a resumed run adds the wall clock of the part recorded there
    previous = json.loads((RESULTS / f"{args.out}.json").read_text()) if (RESULTS / f"{args.out}.json").exists() else {}

    t0 = time.perf_counter()
    clf = classifier_stage(work, args.classifier_episodes)
    out = {
        "command": "python benchmarks/hil_serl_pick_cube.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("work", "out")),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "reward_classifier_precision": clf["test"]["precision"], "reward_classifier_recall": clf["test"]["recall"],
        "reward_classifier": clf,
    }
    _write(out, args.out)
    main_run = run_stage(work, f"main-{args.obs_mode}", args.obs_mode, args.steps, args.eval_every)
    wall = main_run["wall_clock_min"]
    if main_run.get("resumed_from") and previous.get("env_steps") == main_run["resumed_from"]:
        wall += previous["wall_clock_min"]  # a run resumed from the one this file last recorded
    out.update(obs_mode=args.obs_mode, final_success=main_run["final_success"], final_ci95=main_run["final_ci95"],
               env_steps=main_run["env_steps"], updates=main_run["updates"],
               wall_clock_min=wall, intervention_rate=main_run["intervention_rate"],
               actor_hz_state=main_run["actor_hz"], demo_success_rate=main_run["demo_success_rate"],
               evals=main_run["evals"], curve=_curve(main_run["episodes"]),
               resumed_from=main_run.get("resumed_from"),
               **_classifier_in_training(main_run["episodes"]))
    _write(out, args.out)
    if args.pixel_steps:
        pix = run_stage(work, "actor-hz-pixels", "pixels", args.pixel_steps, 0)
        out.update(actor_hz=pix["actor_hz"], pixel_run={k: pix[k] for k in (
            "env_steps", "updates", "wall_clock_min", "actor_hz", "final_success", "intervention_rate")})
    out["benchmark_minutes"] = (time.perf_counter() - t0) / 60
    _write(out, args.out)


def _classifier_in_training(episodes: list[dict]) -> dict:
    """How the classifier judged the training episodes, against the env's own success (the
    learner never saw the latter): a policy that fools the classifier shows up here."""
    said = [e for e in episodes if e["success"]]
    true = [e for e in episodes if e["true_success"]]
    return {"training_episodes": len(episodes),
            "training_episode_classifier_precision": sum(e["true_success"] for e in said) / max(len(said), 1),
            "training_episode_classifier_recall": sum(e["success"] for e in true) / max(len(true), 1)}


def _curve(episodes: list[dict], window: int = 20) -> list[dict]:
    """Intervention rate and classifier / true success, averaged over windows of episodes."""
    rows = []
    for i in range(0, len(episodes), window):
        chunk = episodes[i:i + window]
        rows.append({"step": chunk[-1]["step"],
                     "intervention_rate": sum(e["intervention_rate"] for e in chunk) / len(chunk),
                     "true_success": sum(e["true_success"] for e in chunk) / len(chunk),
                     "classified_success": sum(e["success"] for e in chunk) / len(chunk)})
    return rows


def _write(out: dict, name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    lines = ["# HIL-SERL on panda/pick-cube\n", f"`{out['command']}` — {out['machine']}\n",
             f"- reward classifier (held-out episodes): precision {out['reward_classifier_precision']:.3f}, "
             f"recall {out['reward_classifier_recall']:.3f}"]
    if "final_success" in out:
        lo, hi = out["final_ci95"]
        lines += [f"- final_success ({out['obs_mode']}, policy alone, 50 episodes): {out['final_success']:.2f} "
                  f"(95% CI {lo:.2f}-{hi:.2f}) after {out['env_steps']} env steps, {out['updates']} updates, "
                  f"{out['wall_clock_min']:.1f} min",
                  f"- intervention rate over the run: {out['intervention_rate']:.3f}"
                  + (f" (the run was resumed from its checkpoint at {out['resumed_from']} env steps)"
                     if out.get("resumed_from") else ""),
                  f"- classifier on the training episodes (vs the env's success, never shown to the learner): "
                  f"precision {out['training_episode_classifier_precision']:.2f}, "
                  f"recall {out['training_episode_classifier_recall']:.2f} over {out['training_episodes']} episodes",
                  "", "| env steps | success (policy alone) |", "|---|---|"]
        lines += [f"| {e['step']} | {e['success']:.2f} |" for e in out["evals"]]
        from vlarl.eval.plots import hil_serl_curves

        hil_serl_curves({"evals": out["evals"], "episodes": [
            {"step": r["step"], "intervention_rate": r["intervention_rate"]} for r in out["curve"]]},
            RESULTS / f"{name}.png", window=1, averaged_over=20)
    if "actor_hz" in out:
        lines.append(f"\n- actor_hz (pixels, front + wrist 128 px, learner training on the same cores): "
                     f"{out['actor_hz']:.1f}")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
