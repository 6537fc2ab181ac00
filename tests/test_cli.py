import json
import subprocess
import sys
from pathlib import Path

from vlarl.cli import main


def test_envs_lists_all(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 53 and any(line.startswith("metaworld/drawer-open") and "open the drawer" in line for line in out)


def test_unknown_env_exits_2_with_one_clear_line(tmp_path, capsys):
    assert main(["collect", "--env", "toy/rech", "--episodes", "1", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown env 'toy/rech'; valid: toy/reach" in err[0]
    assert not (tmp_path / "d").exists()  # nothing written for a bad request


def test_unknown_override_key(tmp_path, capsys):
    assert main(["collect", "--out", str(tmp_path), "env.imagesize=3"]) == 2
    assert "unknown key 'env.imagesize'; valid: env.image_size" in capsys.readouterr().err


def test_collect_then_dataset_info(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["collect", "--env", "toy/reach", "--obs-mode", "pixels", "--image-size", "16",
            "--episodes", "3", "--workers", "2", "--noise", "0.1", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == 3
    assert main(["dataset", "info", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "3 episodes" in text and "observation.images.top" in text and "expert 3" in text
    assert main(["dataset", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 3


def test_dataset_info_on_a_damaged_dataset(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["collect", "--env", "toy/reach", "--episodes", "2", "--out", str(out)]) == 0
    victim = next(out.glob("data/chunk-000/episode_000001.npz"))
    victim.write_bytes(victim.read_bytes()[:100])
    capsys.readouterr()
    assert main(["dataset", "info", str(out), "--verify"]) == 1
    assert "episode_000001.npz: episode 1 is truncated" in capsys.readouterr().out


def test_console_script_demo_small(tmp_path):
    """The default demo end to end, shrunk (short episodes, few steps): HIL-SERL from the
    pick-cube cameras with an actor process, then the policy alone before and after, a plot
    and a video."""
    run_dir = tmp_path / "demo"
    command = [sys.executable, "-m", "vlarl", "demo", f"run_dir={run_dir}", "hil_serl.steps=300", "hil_serl.demos=2",
               "hil_serl.env.episode_length=20", "hil_serl.eval_every=150", "hil_serl.eval_episodes=2",
               "hil_serl.final_eval_episodes=2", "hil_serl.sac.hidden=32", "hil_serl.sac.batch_size=32"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HIL-SERL on panda/pick-cube from pixels" in proc.stdout and "before training" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_steps"] >= 300 and summary["updates"] > 0 and summary["final_episodes"] == 2
    steps = [e["step"] for e in summary["evals"]]
    assert steps[0] == 0 and steps[-1] >= 300 and len(steps) >= 3 and summary["actor_hz"] > 0
    # "before training" is the curve's step-0 evaluation, not a second one
    assert summary["success_before"] == summary["evals"][0]["success"] and summary["before_episodes"] == 2
    assert Path(summary["plot"]).stat().st_size > 0
    assert summary["videos"] and all(Path(v).stat().st_size > 0 for v in summary["videos"])
    # The same command again finds the run finished and reports it (no actor runs, so no rate).
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained" in again.stdout and json.loads(again.stdout.splitlines()[-1])["mean_success"] == \
        summary["mean_success"]


def test_console_script_sft_demo_small(tmp_path):
    """The SFT demo end to end, shrunk: collect -> SFT -> eval with a table, a plot and a video."""
    run_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "vlarl", "demo", "--config", str(Path(__file__).parents[1] / "configs" / "demo-sft.yaml"),
         f"run_dir={run_dir}", "collect.episodes=2", "collect.workers=1",
         "collect.env.image_size=48", "sft.steps=20", "sft.eval_episodes=2", "sft.eval_envs=1",
         "sft.video_episodes=1", "sft.log_every=10"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "success" in proc.stdout and "metaworld/drawer-open" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["demos"] == 2 and summary["sft_steps"] == 20
    result = summary["per_task"]["metaworld/drawer-open"]
    assert result["episodes"] == 2 and result["ci95"][0] <= result["success_rate"] <= result["ci95"][1]
    assert (run_dir / "sft" / "training.png").stat().st_size > 0
    assert "| metaworld/drawer-open |" in (run_dir / "sft" / "eval.md").read_text()
    assert all(Path(v).stat().st_size > 0 for v in summary["videos"]) and summary["videos"]
    assert list((run_dir / "sft" / "tb").iterdir())


def test_demo_resume_continues_the_saved_run(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    small = ["collect.env.name=toy/reach", "collect.env.image_size=16", "collect.env.cameras=[top]",
             "collect.env.episode_length=20", "collect.workers=1", "sft.policy.encoder=conv", "sft.policy.dim=32",
             "sft.policy.layers=1", "sft.eval_episodes=2", "sft.eval_envs=1", "sft.save_every=5", "sft.log_every=5"]
    assert main(["demo", f"run_dir={run_dir}", "recipe=sft", "collect.episodes=2", "sft.steps=5", *small]) == 0
    # The saved config is used; overrides may raise the targets.
    assert main(["demo", "--resume", str(run_dir), "collect.episodes=3", "sft.steps=10"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["demos"] == 3 and summary["collect"]["already_there"] == 2
    assert summary["env"] == "toy/reach" and summary["sft_steps"] == 10
    assert main(["demo", "--resume", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
