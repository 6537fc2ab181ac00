"""Real faults on the multiprocess runtime: SIGKILL and SIGSTOP of learner and actors, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlarl.runtime.actor import read_status
from vlarl.runtime.launcher import alive

TOY = ["--env", "toy/reach", "env.obs_mode=state", "relative_frame=false", "demos=2", "sac.ensemble=2",
       "sac.utd=1", "sac.batch_size=32", "sac.hidden=16", "eval_every=0", "final_eval_episodes=2",
       "transport.timeout_s=2", "transport.heartbeat_s=0.5", "control_hz=100"]


def _vlarl(args, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vlarl", "train", "hil-serl", *args], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the learner exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _checkpoint_step(run: Path) -> int | None:
    metas = sorted((run / "checkpoints").glob("step_*/meta.json"))
    return json.loads(metas[-1].read_text())["step"] if metas else None


def test_killed_learner_resumes_while_its_actor_keeps_stepping(tmp_path):
    run, log = tmp_path / "run", tmp_path / "learner.log"
    learner = _vlarl([*TOY, "steps=100000", "save_every=200", f"run_dir={run}"], log)
    try:
        _wait(lambda: _checkpoint_step(run), 120, "a first checkpoint", learner)
        status = _wait(lambda: read_status(run, 0), 30, "the actor's status")
        actor_pid = status["pid"]
        # a stalled learner (stopped, socket still open) is noticed by the actor within seconds
        os.kill(learner.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _wait(lambda: "silent for" in (run / "actors" / "actor-0.log").read_text(), 15, "the actor to report a stall")
        assert time.monotonic() - t0 < 8
        os.kill(learner.pid, signal.SIGKILL)
        learner.wait(timeout=10)
        steps_then = read_status(run, 0)["steps"]
        time.sleep(3)
        status = read_status(run, 0)
        assert alive(actor_pid) and status["pid"] == actor_pid
        assert status["steps"] > steps_then + 50 and not status["connected"]  # still stepping, buffering
        assert status["outbox"] > 0
        saved = _checkpoint_step(run)
        resumed = _vlarl(["--resume", str(run), f"steps={saved + 600}"], tmp_path / "resumed.log")
        assert resumed.wait(timeout=240) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
        out = (tmp_path / "resumed.log").read_text()
        assert f"pid {actor_pid}) is still running from before" in out  # reconnected, not duplicated
        results = json.loads((run / "results.json").read_text())
        assert results["resumed_from"] == saved and results["env_steps"] >= saved + 600
        _wait(lambda: not alive(actor_pid), 20, "the actor to stop with the run")
    finally:
        for p in (learner,):
            if p.poll() is None:
                p.kill()
        status = read_status(run, 0)
        if status and alive(status["pid"]):
            os.kill(status["pid"], signal.SIGKILL)


def test_stalled_then_killed_actor_is_reported_and_replaced_and_ctrl_c_stops_cleanly(tmp_path):
    run, log = tmp_path / "run", tmp_path / "learner.log"
    learner = _vlarl([*TOY, "steps=100000", "save_every=100000", "sac.utd=1000", "sac.actor_every=1", f"run_dir={run}"], log)
    try:
        first = _wait(lambda: (s := read_status(run, 0)) and s["steps"] > 100 and s, 120, "the actor to step", learner)
        pid = first["pid"]
        _wait(lambda: "actor 0 joined" in log.read_text(), 10, "the join")
        os.kill(pid, signal.SIGSTOP)  # stalled: alive, socket open, silent
        t0 = time.monotonic()
        _wait(lambda: "actor 0 disconnected: silent for" in log.read_text(), 15, "the learner to report the stall")
        assert time.monotonic() - t0 < 8
        updates = _updates(run)
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: "actor 0 exited" in log.read_text(), 15, "the learner to notice the dead actor")
        new = _wait(lambda: (s := read_status(run, 0)) and s["pid"] != pid and s["steps"] > 0 and s, 90,
                    "a new actor to join and step")
        # the status file appears at the first step; the join follows once the link connects
        _wait(lambda: log.read_text().count("actor 0 joined") >= 2, 30, "the new actor to join", learner)
        assert _updates(run) > updates  # the learner kept training throughout
        learner.send_signal(signal.SIGINT)  # Ctrl-C
        assert learner.wait(timeout=60) == 130
        out = log.read_text()
        assert "interrupted: saving a checkpoint" in out and _checkpoint_step(run) is not None
        _wait(lambda: not alive(new["pid"]), 20, "the actor to stop")
    finally:
        if learner.poll() is None:
            learner.kill()
        status = read_status(run, 0)
        if status and alive(status["pid"]):
            os.kill(status["pid"], signal.SIGKILL)


def _updates(run: Path) -> int:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"updates"' in line]
    return int(rows[-1]["updates"]) if rows else 0


def test_ray_runtime_runs_the_same_recipe(tmp_path):
    ray = pytest.importorskip("ray")
    log = tmp_path / "learner.log"
    learner = _vlarl([*TOY, "runtime=ray", "steps=400", "save_every=200", f"run_dir={tmp_path / 'run'}"], log)
    try:
        assert learner.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if learner.poll() is None:
            learner.kill()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["runtime"] == "ray" and results["env_steps"] >= 400 and results["updates"] > 0
    assert "actor 0 joined" in log.read_text()
    assert ray is not None
