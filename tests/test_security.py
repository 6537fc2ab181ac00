"""Hostile peers on loopback against the learner's transport and the robot bridge: nothing they
send runs as code, a wrong secret is refused before any payload, malformed or oversized
messages are refused, and neither server stops serving a legitimate client."""

import os
import pickle
import re
import socket
import stat
import struct
import subprocess
import threading
import time
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest

from vlarl.envs import make
from vlarl.runtime import wire
from vlarl.runtime.secret import write_secret_file
from vlarl.runtime.transport import ActorClient, EpisodeSpec, LearnerServer, TransportConfig, weights_spec
from vlarl.runtime.wire import AuthError, TLSConfig

SPEC = EpisodeSpec(state_dim=4, action_dim=2, cameras=None, max_length=30)
BOUND = 20.0  # generous bound on every wait for an event


class Exploit:
    """Unpickling this runs a shell command that creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _until(cond, what: str, timeout: float = BOUND):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _episode(t: int = 5, state_dim: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"actor": 0, "arrays": {"observation.state": rng.normal(size=(t + 1, state_dim)).astype(np.float32),
                                   "action": rng.uniform(-1, 1, (t, 2)).astype(np.float32),
                                   "reward": rng.normal(size=t).astype(np.float32),
                                   "terminated": np.zeros(t, bool), "truncated": np.eye(1, t, t - 1, dtype=bool)[0],
                                   "is_success": np.zeros(t, bool)},
            "intervened": np.zeros(t, bool), "success": False, "true_success": False, "weights_version": -1}


@pytest.fixture
def learner(tmp_path):
    secret = write_secret_file(tmp_path / "secret")
    lines: list[str] = []
    cfg = TransportConfig(heartbeat_s=0.2, timeout_s=3.0, handshake_timeout_s=1.0, max_pending=8)
    server = LearnerServer(cfg, tmp_path, secret, SPEC, max_actors=2, log=lines.append)
    server.lines = lines
    yield server, secret, cfg
    server.close()


def _closed(s: socket.socket) -> bool:
    """Whether the peer closes the connection (reading past whatever it sent first)."""
    while True:
        try:
            if not s.recv(65536):
                return True
        except ConnectionResetError:
            return True


def _actor(server, secret, cfg, run_dir, actor_id=0, **kw):
    return ActorClient(actor_id, run_dir, cfg, address=(server.host, server.port), log=lambda m: None, secret=secret,
                       **kw)


def _delivers(server, link, seed: int) -> None:
    """A legitimate actor's episode reaches the inbox, unchanged."""
    sent = _episode(seed=seed)
    link.send_episode(sent)
    actor, got = _until(lambda: server.inbox.get(), f"episode {seed} in the inbox")
    np.testing.assert_array_equal(got["arrays"]["reward"], sent["arrays"]["reward"])
    assert actor == got["actor"] == link.actor_id


def test_pickled_exploits_run_nothing_and_the_learner_serves_on(learner, tmp_path):
    server, secret, cfg = learner
    marker = tmp_path / "pwned"
    payload = pickle.dumps(("hello", Exploit(marker)))
    address = (server.host, server.port)
    # 1. raw pickle instead of the handshake
    with socket.create_connection(address) as s:
        s.sendall(struct.pack("!i", len(payload)) + payload)
        s.settimeout(BOUND)
        assert s.recv(4096)[:8] == wire.MAGIC  # the challenge; the pickle is only ever read as a bad answer
    # 2. the old protocol with the key that used to be in the source
    with pytest.raises(Exception):  # noqa: B017 - whatever multiprocessing makes of our challenge
        conn = Client(address, authkey=b"vlarl")
        conn.send(("hello", Exploit(marker)))
        conn.recv()
    # 3. a peer holding the secret sends a pickle as a frame
    with wire.connect(address, secret, 5) as s:
        s.sendall(wire.PREFIX.pack(len(payload), 0) + payload)
        s.settimeout(BOUND)
        assert s.recv(1) == b""  # refused and closed
    link = _actor(server, secret, cfg, tmp_path)
    try:
        _delivers(server, link, seed=1)
    finally:
        link.close()
    assert not marker.exists()
    assert server.refused >= 3 and any("refused 127.0.0.1" in line for line in server.lines)


def test_a_wrong_secret_is_refused_before_any_payload(learner, tmp_path):
    server, secret, cfg = learner
    with pytest.raises(AuthError, match="refused this secret"):
        wire.connect((server.host, server.port), b"x" * 32, 5)
    bad = _actor(server, b"y" * 32, cfg, tmp_path)
    link = _actor(server, secret, cfg, tmp_path, actor_id=1)
    try:
        _delivers(server, link, seed=2)
        assert server.connected == [1] and not bad.connected
    finally:
        bad.close()
        link.close()
    assert any("wrong secret" in line for line in server.lines)


def test_garbage_eof_huge_headers_and_idle_sockets_neither_kill_nor_block(learner, tmp_path):
    server, secret, cfg = learner
    address = (server.host, server.port)
    idle = [socket.create_connection(address) for _ in range(3 * cfg.max_pending)]  # more than it will hold
    with socket.create_connection(address) as s:
        s.sendall(os.urandom(4096))
    socket.create_connection(address).close()  # connect, then close at once
    with wire.connect(address, secret, 5) as s:  # authenticated, then a 2 GiB header
        s.sendall(wire.PREFIX.pack(2**31, 0))
        s.settimeout(BOUND)
        assert s.recv(1) == b""
    with wire.connect(address, secret, 5) as s:  # a prefix announcing 2^40 bytes of arrays
        wire.send(s, "hello", {"actor": 1, "pid": 1})
        s.sendall(wire.PREFIX.pack(64, 2**40))
        s.settimeout(BOUND)
        assert _closed(s)
    with wire.connect(address, secret, 5) as s:  # a header listing 2^40 bytes of arrays
        wire.send(s, "hello", {"actor": 1, "pid": 1})
        header = b'{"v":1,"kind":"episode","body":null,"arrays":[["a","uint8",[1048576,1048576]]]}'
        s.sendall(wire.PREFIX.pack(len(header), 0) + header)
        s.settimeout(BOUND)
        _until(lambda: any("over its ceiling" in line for line in server.lines), "the ceiling refusal")
    held = socket.create_connection(address)
    held.sendall(wire.MAGIC)  # starts a handshake, then goes silent
    t0 = time.monotonic()
    link = _actor(server, secret, cfg, tmp_path)
    try:
        _delivers(server, link, seed=3)
        assert time.monotonic() - t0 < BOUND
    finally:
        link.close()
        for s in [*idle, held]:
            s.close()
    assert any("dropped the oldest" in line for line in server.lines)


def test_a_forged_hello_is_refused_and_the_real_actor_keeps_its_place(learner, tmp_path):
    server, secret, cfg = learner
    link = _actor(server, secret, cfg, tmp_path)
    try:
        _delivers(server, link, seed=4)
        with wire.connect((server.host, server.port), secret, 5) as s:
            wire.send(s, "hello", {"actor": 0, "pid": 666})
            s.settimeout(BOUND)
            msg = wire.recv(s, {"refused": 0}, BOUND)
            assert msg.kind == "refused" and "already connected" in msg.body["reason"]
        with wire.connect((server.host, server.port), secret, 5) as s:
            wire.send(s, "hello", {"actor": 7, "pid": 666})  # not one of this run's actors
            assert "not one of this run's" in wire.recv(s, {"refused": 0}, BOUND).body["reason"]
        _delivers(server, link, seed=5)  # still the real actor's connection
        assert server.connected == [0] and link.disconnects == 0
    finally:
        link.close()


@pytest.mark.parametrize("damage", ["state_dim", "nan_reward", "too_long", "missing_key", "wrong_dtype",
                                    "unknown_kind", "lengths_differ"])
def test_a_malformed_episode_is_refused_before_the_buffer(learner, tmp_path, damage):
    server, secret, cfg = learner
    episode = _episode(t=40 if damage == "too_long" else 5, state_dim=5 if damage == "state_dim" else 4)
    episode.pop("actor")
    arrays = episode["arrays"]
    if damage == "nan_reward":
        arrays["reward"][2] = np.nan
    elif damage == "missing_key":
        del arrays["terminated"]
    elif damage == "wrong_dtype":
        arrays["action"] = arrays["action"].astype(np.float64)
    elif damage == "lengths_differ":
        episode["intervened"] = np.zeros(4, bool)
    with wire.connect((server.host, server.port), secret, 5) as s:
        wire.send(s, "hello", {"actor": 1, "pid": 1})
        wire.send(s, "exec" if damage == "unknown_kind" else "episode", episode)
        s.settimeout(BOUND)
        assert _closed(s)  # after heartbeats, the learner closes the connection
    assert server.inbox.get() is None
    assert any("actor 1" in line and "refused its message" in line for line in server.lines)
    link = _actor(server, secret, cfg, tmp_path)  # the server goes on
    try:
        _delivers(server, link, seed=6)
    finally:
        link.close()


def test_weights_that_do_not_fit_the_policy_are_refused_by_the_actor(learner, tmp_path):
    import torch

    server, secret, cfg = learner
    policy = {"w": torch.ones(3, 2), "b": torch.zeros(3)}
    link = _actor(server, secret, cfg, tmp_path, weights_spec=weights_spec(policy))
    try:
        _until(lambda: link.connected, "the link")
        server.publish(1, {"state_dict": {"w": torch.ones(4, 2), "b": torch.zeros(3)}, "env_steps": 0})
        _until(lambda: link.disconnects >= 1, "the actor to drop the link on bad weights")
        assert link.latest_weights() is None
        server.publish(2, {"state_dict": {"w": torch.full((3, 2), 2.0), "b": torch.zeros(3)}, "env_steps": 7})
        version, payload = _until(link.latest_weights, "good weights")
        assert version == 2 and payload["env_steps"] == 7 and torch.equal(payload["state_dict"]["w"], torch.full((3, 2), 2.0))
    finally:
        link.close()


def test_the_run_secret_is_private_and_never_logged(tmp_path, monkeypatch):
    from vlarl.runtime.secret import actor_secret, start_run_secret

    monkeypatch.delenv("VLARL_SECRET", raising=False)
    monkeypatch.delenv("VLARL_SECRET_FILE", raising=False)
    first = start_run_secret(tmp_path)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert actor_secret(tmp_path) == first and start_run_secret(tmp_path) != first  # fresh at each start
    (tmp_path / "secret").chmod(0o644)
    with pytest.raises(Exception, match="readable by other users"):
        actor_secret(tmp_path)
    monkeypatch.setenv("VLARL_SECRET", "chosen-by-the-user-0123456789")
    assert start_run_secret(tmp_path / "other") == actor_secret(tmp_path / "other") == b"chosen-by-the-user-0123456789"


# --- the robot bridge -----------------------------------------------------------------------
@pytest.fixture
def robot(tmp_path):
    from vlarl.runtime.bridge import RobotServer

    secret = write_secret_file(tmp_path / "robot.secret")
    lines: list[str] = []
    server = RobotServer(lambda: make("toy/reach"), port=0, secret=secret, log=lines.append,
                         handshake_timeout_s=1.0, request_timeout_s=2.0, idle_timeout_s=1.5, max_pending=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.lines = lines
    yield server, tmp_path / "robot.secret"
    server.close()
    thread.join(BOUND)
    assert not thread.is_alive()


def _drive(port: int, secret_file: Path, steps: int = 3) -> None:
    from vlarl.runtime.bridge import RemoteEnv

    env = RemoteEnv("127.0.0.1", port, secret_file=secret_file, timeout_s=5, connect_timeout_s=BOUND)
    obs, _ = env.reset(seed=1)
    assert obs["state"].shape == (4,)
    for _ in range(steps):
        env.step(np.zeros(2, np.float32))
    env.close()


def test_the_robot_server_survives_every_bad_client(robot, tmp_path):
    from vlarl.runtime.bridge import RemoteEnv, RobotRefused

    server, secret_file = robot
    port = server.address[1]
    marker = tmp_path / "pwned"
    address = ("127.0.0.1", port)
    with pytest.raises(RobotRefused, match="refused this secret"):  # a wrong key
        RemoteEnv("127.0.0.1", port, secret=b"z" * 32, connect_timeout_s=2)
    with pytest.raises(Exception):  # noqa: B017 - the old protocol and key
        Client(address, authkey=b"vlarl-robot").send(("step", Exploit(marker)))
    with socket.create_connection(address) as s:  # garbage before the handshake
        s.sendall(os.urandom(100))
    socket.create_connection(address).close()  # connect-then-close
    with socket.create_connection(address) as s:  # a 2^40 length where the handshake goes
        s.sendall(struct.pack("!Q", 2**40) * 10)
    secret = secret_file.read_bytes().strip()
    with wire.connect(address, secret, 5) as s:  # authenticated: a pickle, then a huge header
        assert wire.recv(s, {"ready": 0}, BOUND).kind == "ready"
        payload = pickle.dumps(("step", Exploit(marker)))
        s.sendall(wire.PREFIX.pack(len(payload), 0) + payload)
        s.settimeout(BOUND)
        assert _closed(s)
    with wire.connect(address, secret, 5) as s:
        wire.recv(s, {"ready": 0}, BOUND)
        s.sendall(wire.PREFIX.pack(2**31, 0))
        s.settimeout(BOUND)
        assert _closed(s)
    with wire.connect(address, secret, 5) as s:  # an action of the wrong shape, then a method not served
        wire.recv(s, {"ready": 0}, BOUND)
        wire.send(s, "step", {"action": np.zeros(7, np.float32)})
        reply = wire.recv(s, {"refused": 0}, BOUND)
        assert reply.kind == "refused" and "float32[2]" in reply.body["message"]
    idle = [socket.create_connection(address) for _ in range(3 * server.max_pending)]
    try:
        _drive(port, secret_file)
    finally:
        for s in idle:
            s.close()
    assert not marker.exists()
    assert any("wrong secret" in line for line in server.lines) and server.refused >= 5


def test_one_idle_client_holds_the_robot_only_until_its_idle_timeout(robot):
    from vlarl.runtime.bridge import RemoteEnv

    server, secret_file = robot
    port = server.address[1]
    holder = RemoteEnv("127.0.0.1", port, secret_file=secret_file, timeout_s=5, connect_timeout_s=BOUND)
    holder.reset(seed=0)
    t0 = time.monotonic()
    _drive(port, secret_file)  # told "busy" until the holder idles out (1.5 s), then served
    assert time.monotonic() - t0 >= 1.0
    assert any("idle for" in line for line in server.lines)
    from vlarl.runtime.bridge import RobotDisconnected

    with pytest.raises(RobotDisconnected):  # the idle one learns it lost the robot at its next call
        holder.step(np.zeros(2, np.float32))
    holder.reset(seed=0)  # and reconnects
    holder.close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists() and not os.popen("command -v openssl").read(),
                    reason="openssl makes the test certificate")
def test_tls_on_the_robot_bridge_and_the_transport(tmp_path):
    import torch

    from vlarl.runtime.bridge import RemoteEnv, RobotDisconnected, RobotServer

    cert, key = _self_signed(tmp_path)
    secret = write_secret_file(tmp_path / "robot.secret")
    server = RobotServer(lambda: make("toy/reach"), port=0, secret=secret, tls=TLSConfig(cert=str(cert), key=str(key)),
                         handshake_timeout_s=1.0, log=lambda m: None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.address[1]
    try:
        with pytest.raises(RobotDisconnected):  # a plain-TCP client gets nowhere
            RemoteEnv("127.0.0.1", port, secret=secret, connect_timeout_s=1)
        env = RemoteEnv("127.0.0.1", port, secret=secret, connect_timeout_s=BOUND,
                        tls=TLSConfig(ca=str(cert), server_name="localhost"))
        env.reset(seed=0)
        env.step(np.zeros(2, np.float32))
        env.close()
    finally:
        server.close()
        thread.join(BOUND)
    tls = TLSConfig(cert=str(cert), key=str(key), ca=str(cert))
    cfg = TransportConfig(heartbeat_s=0.2, timeout_s=3.0, handshake_timeout_s=1.0, tls=tls)
    learner = LearnerServer(cfg, tmp_path, secret, SPEC, log=lambda m: None)
    link = ActorClient(0, tmp_path, cfg, address=(learner.host, learner.port), log=lambda m: None, secret=secret)
    try:
        _delivers(learner, link, seed=7)
        learner.publish(1, {"state_dict": {"w": torch.ones(2)}, "env_steps": 3})
        assert _until(link.latest_weights, "weights over TLS")[0] == 1
    finally:
        link.close()
        learner.close()


def test_no_module_unpickles_or_loads_torch_pickles():
    src = Path(__file__).resolve().parents[1] / "src" / "vlarl"
    banned = re.compile(r"^\s*import pickle|pickle\.loads?\(|torch\.load\(|allow_pickle=True|multiprocessing\.connection",
                        re.MULTILINE)
    hits = [f"{p.relative_to(src)}: {m.group(0).strip()}" for p in src.rglob("*.py") for m in banned.finditer(p.read_text())]
    assert hits == []


def test_a_damaged_newest_checkpoint_is_refused_by_name_unless_resumed_from_older(tmp_path, capsys):
    import json

    from vlarl.cli import main

    run = tmp_path / "run"
    toy = ["train", "hil-serl", "--env", "toy/reach", "env.obs_mode=state", "relative_frame=false", "demos=2",
           "sac.ensemble=2", "sac.utd=1", "sac.batch_size=32", "sac.hidden=16", "eval_every=0",
           "final_eval_episodes=2", "runtime=inprocess", "steps=300", "save_every=100", f"run_dir={run}"]
    assert main(toy) == 0
    steps = sorted(int(p.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*"))
    newest = run / "checkpoints" / f"step_{steps[-1]:09d}" / "agent.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    metrics = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", "hil-serl", "--resume", str(run), "steps=400"]) == 2
    err = capsys.readouterr().err
    assert "agent.safetensors" in err and "--resume-from-older" in err
    assert (run / "metrics.jsonl").read_bytes() == metrics  # nothing truncated by a refused resume
    assert main(["train", "hil-serl", "--resume", str(run), "--resume-from-older", "steps=400"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["resumed_from"] == steps[-2] and results["env_steps"] >= 400
    assert main(["train", "hil-serl", "--resume-from-older", "steps=400"]) == 2
