"""The robot bridge on loopback: a served sim behaves as the local one, latency is measured,
a killed robot side gives a clear error and the next reset reconnects; the safety box."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from vlarl.envs import make
from vlarl.errors import VlarlError


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _secret(tmp_path):
    from vlarl.runtime.secret import write_secret_file

    path = tmp_path / "robot.secret"
    write_secret_file(path)
    return path


def _serve(port, secret_file, env="toy/reach", *options):
    return subprocess.Popen([sys.executable, "-m", "vlarl", "robot", "serve", "--env", env, "--port", str(port),
                             "--secret-file", str(secret_file), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.timeout(120)
def test_remote_env_matches_the_local_one_survives_a_killed_robot_and_reconnects(tmp_path):
    from vlarl.runtime.bridge import RemoteEnv, RobotDisconnected

    port, secret = _free_port(), _secret(tmp_path)
    server = _serve(port, secret)
    try:
        remote = RemoteEnv("127.0.0.1", port, secret_file=secret, timeout_s=5, connect_timeout_s=30)
        local = make("toy/reach")
        assert remote.action_space == local.action_space
        obs_r, _ = remote.reset(seed=3)
        obs_l, _ = local.reset(seed=3)
        rng = np.random.default_rng(0)
        for _ in range(10):
            a = rng.uniform(-1, 1, 2).astype(np.float32)
            r_out, l_out = remote.step(a), local.step(a)
            np.testing.assert_array_equal(r_out[0]["state"], l_out[0]["state"])
            assert r_out[1:4] == l_out[1:4]
        lat = remote.latency()
        assert lat["steps"] == 10 and 0 < lat["median"] <= lat["p99"] < 1.0
        with pytest.raises(VlarlError, match="not served"):
            remote.call("expert_action")

        server.send_signal(signal.SIGKILL)  # the robot's computer loses the process
        server.wait()
        with pytest.raises(RobotDisconnected, match=f"127.0.0.1:{port} stopped answering during step"):
            remote.step(np.zeros(2, np.float32))
        with pytest.raises(RobotDisconnected, match="not connected"):
            remote.step(np.zeros(2, np.float32))
        server = _serve(port, secret)  # back up: the next reset reconnects
        obs_r, _ = remote.reset(seed=3)
        np.testing.assert_array_equal(obs_r["state"], local.reset(seed=3)[0]["state"])
        assert remote.step(np.zeros(2, np.float32))[0]["state"].shape == (4,)
        remote.close()
        local.close()
    finally:
        server.kill()
        server.wait()


def test_a_robot_that_never_answers_is_named_in_time(tmp_path):
    from vlarl.runtime.bridge import RemoteEnv, RobotDisconnected

    t0 = time.monotonic()
    with pytest.raises(RobotDisconnected, match="cannot connect within 1 s"):
        RemoteEnv("127.0.0.1", _free_port(), secret_file=_secret(tmp_path), connect_timeout_s=1)
    assert time.monotonic() - t0 < 10


def test_safety_box_keeps_the_end_effector_inside_and_slow(close_after):
    from vlarl.envs.robot import RobotEnv, SafetyBox, SafetyConfig

    env = make("panda/pick-cube")
    close_after(env)
    assert isinstance(env.unwrapped, RobotEnv)
    box = SafetyBox(env, SafetyConfig(low=[0.2, -0.3, 0.0], high=[0.7, 0.3, 0.5], max_speed=0.1, ee_step=0.025,
                                      control_dt=0.1))
    box.reset(seed=0)
    pos = env.unwrapped.ee_pose()[0]
    safe, clipped = box.safe_action(np.array([1, 0, 0, 0], np.float32))
    assert clipped and np.linalg.norm(safe[:3] * 0.025) == pytest.approx(0.01, rel=1e-4)  # 0.1 m/s for 0.1 s
    box.low = pos - 0.002  # a box just around the hand: a push out of it is cut at the wall
    box.high = pos + 0.002
    safe, clipped = box.safe_action(np.array([0, 0, -1, 1], np.float32))
    assert clipped and safe[2] * 0.025 == pytest.approx(-0.002, abs=1e-6) and safe[3] == 1
    _, _, _, _, info = box.step(np.array([0, 0, 0.01, 0], np.float32))
    assert info["safety_clipped"] is False
    with pytest.raises(VlarlError, match="low"):
        SafetyBox(env, SafetyConfig(low=[1, 0, 0], high=[0, 1, 1]))
    with pytest.raises(VlarlError, match="ee_pose"):
        SafetyBox(make("toy/reach"))


@pytest.mark.timeout(120)
def test_pixel_steps_are_not_held_back_by_the_network_stack(tmp_path):
    """An 84 px observation is sent as a header and a body; without TCP_NODELAY every step
    waited ~40 ms for a delayed ACK (measured 44 ms); with it, well under a millisecond."""
    from vlarl.runtime.bridge import RemoteEnv

    port, secret = _free_port(), _secret(tmp_path)
    server = _serve(port, secret, "toy/reach", "obs_mode=pixels", "image_size=84")
    try:
        remote = RemoteEnv("127.0.0.1", port, secret_file=secret, connect_timeout_s=30)
        obs, _ = remote.reset(seed=0)
        assert obs["pixels"]["top"].shape == (84, 84, 3)
        for _ in range(60):
            remote.step(np.zeros(2, np.float32))
        assert remote.latency()["median"] < 0.02, remote.latency()
        remote.close()
    finally:
        server.kill()
        server.wait()
