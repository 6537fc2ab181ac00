"""Security figures: the attacks a hostile peer on loopback can try against a training
HIL-SERL learner and a ``vlarl robot serve`` process, with their outcome, and what the wire
format costs beside the pickle format it replaced, measured side by side in one run.

    python benchmarks/security.py [--bridge-steps 1000] [--rounds 3] [--episodes 200]

- Attacks (each against a live server, then a legitimate client must still be served):
  a pickle whose ``__reduce__`` runs ``touch FILE`` sent raw, through the old protocol with
  the key that used to be in the source, and as a frame by a peer that passed the handshake;
  a wrong secret; a forged hello for the live actor 0; garbage before the handshake; a
  connect-then-close flood; a 2 GiB length header; a header announcing 2^40 bytes; more idle
  sockets than the server holds; an idle authenticated robot client. Outcome: whether the file
  appeared, whether the server is still serving, and what it logged.
- Cost: the robot bridge's round trip per 84 px step (toy/reach, one camera) and the
  transport's episodes/s (30-step 84 px episodes, actor -> learner inbox), the old pickle
  format (the modules as they were at ``OLD_COMMIT``, read from git) and the new one,
  interleaved round by round on the same machine; ratios new/old.

Writes benchmarks/results/security.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "3508bd1"  # the last commit with the pickle format on both sockets


class Exploit:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def old_module(name: str) -> types.ModuleType:
    """``vlarl.runtime.<name>`` as it was at OLD_COMMIT (the pickle format), for comparison."""
    source = subprocess.check_output(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:src/vlarl/runtime/{name}.py"])
    if f"old_{name}" in sys.modules:
        return sys.modules[f"old_{name}"]
    module = types.ModuleType(f"old_{name}")
    sys.modules[module.__name__] = module  # dataclasses look their module up here
    exec(compile(source, f"{OLD_COMMIT}:{name}.py", "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def _closed_by_peer(sock: socket.socket, timeout: float = 20.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except OSError:
        return False


# --- attacks ----------------------------------------------------------------------------------
def attack_learner(work: Path) -> dict:
    """A toy HIL-SERL run (multiprocess: one actor process over the socket) under attack."""
    from vlarl.runtime import wire
    from vlarl.runtime.transport import read_address

    run, marker = work / "hil", work / "pwned-learner"
    args = [sys.executable, "-m", "vlarl", "train", "hil-serl", "--env", "toy/reach", "env.obs_mode=state",
            "relative_frame=false", "demos=2", "sac.ensemble=2", "sac.utd=1", "sac.batch_size=32", "sac.hidden=16",
            "eval_every=0", "final_eval_episodes=5", "control_hz=100", "steps=3000", "transport.max_pending=8",
            f"run_dir={run}"]
    log = work / "hil.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    cases: list[dict] = []
    try:
        _wait(lambda: "actor 0 joined" in log.read_text(), 120, "the actor to join")
        address = _wait(lambda: read_address(run), 10, "learner.json")
        address = ("127.0.0.1", address[1])
        payload = pickle.dumps(("hello", {"actor": 0, "exploit": Exploit(marker)}))

        def case(name: str, fn) -> None:
            t0 = time.perf_counter()
            try:
                outcome = fn()
            except Exception as err:  # noqa: BLE001 - the attacker's side failing is an outcome too
                outcome = f"attacker got {type(err).__name__}: {err}"
            cases.append({"attack": name, "outcome": outcome, "seconds": round(time.perf_counter() - t0, 3),
                          "learner_alive": proc.poll() is None, "file_created": marker.exists()})

        def raw_pickle():
            with socket.create_connection(address) as s:
                s.sendall(struct.pack("!i", len(payload)) + payload)
                return "closed by the learner" if _closed_by_peer(s) else "left open"

        def old_protocol():
            conn = Client(address, authkey=b"vlarl")
            conn.send(("hello", Exploit(marker)))
            return "connected (should not happen)"

        def wrong_secret():
            wire.connect(address, b"w" * 32, 5)
            return "authenticated (should not happen)"

        def garbage():
            with socket.create_connection(address) as s:
                s.sendall(os.urandom(4096))
                return "closed by the learner" if _closed_by_peer(s) else "left open"

        def connect_close_flood():
            for _ in range(200):
                socket.create_connection(address).close()
            return "200 connections opened and closed"

        def huge_length():
            with socket.create_connection(address) as s:
                s.sendall(wire.PREFIX.pack(2**31, 0) + b"\0" * 64)
                return "closed by the learner" if _closed_by_peer(s) else "left open"

        def idle_sockets():
            idle = [socket.create_connection(address) for _ in range(40)]
            time.sleep(2.0)  # the actor's link reports every second: it must keep delivering
            for s in idle:
                s.close()
            return "40 idle sockets held 2 s (max_pending 8)"

        for name, fn in (("pickle exploit sent raw", raw_pickle), ("old protocol, key b'vlarl', pickle exploit", old_protocol),
                         ("wrong secret", wrong_secret), ("4 KiB of garbage before the handshake", garbage),
                         ("connect-then-close flood (200)", connect_close_flood),
                         ("2 GiB length header", huge_length), ("40 idle sockets", idle_sockets)):
            case(name, fn)
        code = proc.wait(timeout=600)
        text = log.read_text()
        results = json.loads((run / "results.json").read_text())
        summary = {"exit_code": code, "env_steps": results["env_steps"], "final_success": results["final_success"],
                   "actor_joins": text.count("actor 0 joined"), "refused_lines": text.count("refused 127.0.0.1"),
                   "file_created": marker.exists(),
                   "secret_mode": oct((run / "secret").stat().st_mode & 0o777),
                   "run_dir_mode": oct(run.stat().st_mode & 0o777),
                   "secret_in_log": (run / "secret").read_bytes().strip().decode() in text}
        return {"cases": cases, "run": summary}
    finally:
        if proc.poll() is None:
            proc.kill()


def attack_robot(work: Path) -> dict:
    from vlarl.runtime import wire
    from vlarl.runtime.bridge import RemoteEnv
    from vlarl.runtime.secret import write_secret_file

    port, secret_file, marker = _free_port(), work / "robot.secret", work / "pwned-robot"
    secret = write_secret_file(secret_file)
    log = work / "robot.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vlarl", "robot", "serve", "--env", "toy/reach", "--port",
                                 str(port), "--secret-file", str(secret_file), "--idle-timeout", "3", "obs_mode=pixels",
                                 "image_size=84"], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    address = ("127.0.0.1", port)
    cases: list[dict] = []
    try:
        _wait(lambda: "clients need the secret" in log.read_text(), 60, "the robot server")

        def legit() -> float:
            t0 = time.perf_counter()
            env = RemoteEnv(*address, secret_file=secret_file, timeout_s=10, connect_timeout_s=30)
            env.reset(seed=0)
            env.step(np.zeros(2, np.float32))
            env.close()
            return time.perf_counter() - t0

        def case(name: str, fn) -> None:
            try:
                outcome = fn()
            except Exception as err:  # noqa: BLE001
                outcome = f"attacker got {type(err).__name__}: {err}"
            served = None
            try:
                served = round(legit(), 3)
            except Exception as err:  # noqa: BLE001
                served = f"FAILED: {err}"
            cases.append({"attack": name, "outcome": outcome, "server_alive": proc.poll() is None,
                          "legit_client_s": served, "file_created": marker.exists()})

        def exploit_frame():
            with wire.connect(address, secret, 5) as s:
                wire.recv(s, {"ready": 0}, 5)
                p = pickle.dumps(("step", Exploit(marker)))
                s.sendall(wire.PREFIX.pack(len(p), 0) + p)
                return "closed by the server" if _closed_by_peer(s) else "left open"

        def old_protocol():
            Client(address, authkey=b"vlarl-robot").send(("step", Exploit(marker)))
            return "connected (should not happen)"

        def wrong_key():
            wire.connect(address, b"k" * 32, 5)
            return "authenticated (should not happen)"

        def garbage():
            with socket.create_connection(address) as s:
                s.sendall(os.urandom(100))
            return "sent, closed"

        def eof():
            socket.create_connection(address).close()
            return "connected and closed"

        def huge_header():
            with wire.connect(address, secret, 5) as s:
                wire.recv(s, {"ready": 0}, 5)
                header = b'{"v":1,"kind":"step","body":null,"arrays":[["a","uint8",[1048576,1048576]]]}'
                s.sendall(wire.PREFIX.pack(len(header), 0) + header)
                return "closed by the server" if _closed_by_peer(s) else "left open"

        def two_gib_then_silence():
            s = socket.create_connection(address)
            s.sendall(struct.pack("!Q", 2**31))
            time.sleep(0.5)
            s.close()
            return "2 GiB length then 0.5 s of silence"

        def idle_raw():
            idle = [socket.create_connection(address) for _ in range(40)]
            t = threading.Timer(5.0, lambda: [s.close() for s in idle])
            t.start()
            return "40 idle raw sockets held while the client connects"

        def idle_authenticated():
            holder = RemoteEnv(*address, secret_file=secret_file, timeout_s=10, connect_timeout_s=30)
            holder.reset(seed=0)
            threading.Timer(10.0, holder.close).start()
            return "an authenticated client holds the robot and goes idle (idle timeout 3 s)"

        def gave_up_queued():
            s = socket.create_connection(address)
            s.recv(40)  # the challenge, then give up
            s.close()
            return "took the challenge, then left"

        for name, fn in (("pickle exploit as a frame, after the handshake", exploit_frame),
                         ("old protocol, key b'vlarl-robot', pickle exploit", old_protocol),
                         ("wrong secret", wrong_key), ("garbage before the handshake", garbage),
                         ("connect-then-close", eof), ("header announcing 2^40 bytes", huge_header),
                         ("2 GiB length header, then silence", two_gib_then_silence),
                         ("40 idle raw sockets", idle_raw), ("one idle authenticated client", idle_authenticated),
                         ("a client that gave up during the handshake", gave_up_queued)):
            case(name, fn)
        return {"cases": cases, "server_alive_at_end": proc.poll() is None, "file_created": marker.exists(),
                "refused_lines": log.read_text().count("refused")}
    finally:
        proc.kill()
        proc.wait()


def attack_run_directory(work: Path) -> list[dict]:
    """A finished in-process toy HIL-SERL run, then crafted and damaged copies resumed with
    ``vlarl train hil-serl --resume``: what each does."""
    import hashlib
    import shutil

    base = work / "ckpt-base"
    train = [sys.executable, "-m", "vlarl", "train", "hil-serl", "--env", "toy/reach", "env.obs_mode=state",
             "relative_frame=false", "demos=2", "sac.ensemble=2", "sac.utd=1", "sac.batch_size=32", "sac.hidden=16",
             "eval_every=0", "final_eval_episodes=2", "runtime=inprocess", "steps=600", "save_every=200",
             f"run_dir={base}"]
    subprocess.run(train, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    marker = work / "pwned-checkpoint"
    cases = []

    def newest(run: Path) -> Path:
        return max((run / "checkpoints").glob("step_*"))

    def rehash(ckpt: Path, name: str) -> None:  # an attacker who also edits meta.json
        meta = json.loads((ckpt / "meta.json").read_text())
        data = (ckpt / name).read_bytes()
        entry = meta["files"][name]
        if isinstance(entry, dict):
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        (ckpt / "meta.json").write_text(json.dumps(meta))

    def flip(path: Path, at: float) -> None:
        data = bytearray(path.read_bytes())
        i = int(len(data) * at)
        data[i:i + 64] = bytes(b ^ 0xFF for b in data[i:i + 64])
        path.write_bytes(bytes(data))

    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])

    def crafted_pickle_state(run: Path) -> None:
        ckpt = newest(run)
        (ckpt / "state.json").unlink()
        (ckpt / "state.pt").write_bytes(pickle.dumps({"counters": Exploit(marker)}))

    def pickle_as_weights(run: Path) -> None:
        ckpt = newest(run)
        (ckpt / "agent.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
        rehash(ckpt, "agent.safetensors")

    def damage_every(run: Path) -> None:
        for ckpt in (run / "checkpoints").glob("step_*"):
            truncate(ckpt / "agent.safetensors")

    variants = [
        ("pickle exploit as the state file (old state.pt format)", crafted_pickle_state, []),
        ("pickle exploit as the weights, meta.json re-hashed to match", pickle_as_weights, []),
        ("newest checkpoint's weights truncated to half", lambda r: truncate(newest(r) / "agent.safetensors"), []),
        ("the same, resumed with --resume-from-older", lambda r: truncate(newest(r) / "agent.safetensors"),
         ["--resume-from-older"]),
        ("64 bytes flipped in state.json", lambda r: flip(newest(r) / "state.json", 0.5), []),
        ("64 bytes flipped inside the weights", lambda r: flip(newest(r) / "agent.safetensors", 0.6), []),
        ("every checkpoint truncated", damage_every, []),
    ]
    for name, damage, flags in variants:
        run = work / f"ckpt-{len(cases)}"
        shutil.copytree(base, run)
        damage(run)
        kept = {f: (run / f).read_bytes() for f in ("metrics.jsonl", "results.json")}
        proc = subprocess.run([sys.executable, "-m", "vlarl", "train", "hil-serl", "--resume", str(run), *flags,
                               "steps=800"], capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
        said = [line for line in (proc.stderr + proc.stdout).splitlines()
                if "error" in line.lower() or "falling back" in line.lower() or "damaged" in line.lower()]
        cases.append({"case": name, "exit_code": proc.returncode, "file_created": marker.exists(),
                      "history_kept": (all((run / f).read_bytes() == v for f, v in kept.items())
                                       if proc.returncode else "resumed (rows after the used checkpoint redone)"),
                      "outcome": (said[0] if said else (proc.stderr or proc.stdout).strip().splitlines()[-1])
                      .replace(str(run), "RUN")[:300]})
    return cases


# --- cost beside the old format ---------------------------------------------------------------
SERVE_SNIPPET = """
import sys, numpy as np
sys.path.insert(0, {bench!r})
from security import old_module
from vlarl.envs import make
kind, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
make_env = lambda: make("toy/reach", obs_mode="pixels", image_size=84)
if kind == "old":
    server = old_module("bridge").RobotServer(make_env, "127.0.0.1", port, log=lambda m: None)
else:
    from vlarl.runtime.bridge import RobotServer
    server = RobotServer(make_env, "127.0.0.1", port, secret=secret, log=lambda m: None)
print("ready", flush=True)
server.serve_forever()
"""


def bridge_latency(kind: str, steps: int, secret: bytes) -> dict:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE_SNIPPET.format(bench=str(Path(__file__).parent)), kind,
                             str(port), secret.decode()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        if kind == "old":
            env = old_module("bridge").RemoteEnv("127.0.0.1", port, connect_timeout_s=30)
        else:
            from vlarl.runtime.bridge import RemoteEnv

            env = RemoteEnv("127.0.0.1", port, secret=secret, connect_timeout_s=30)
        env.reset(seed=0)
        for _ in range(50):  # warm-up
            env.step(np.zeros(2, np.float32))
        env._times.clear()
        for _ in range(steps):
            env.step(np.zeros(2, np.float32))
        lat = env.latency()
        env.close()
        return {"median_ms": lat["median"] * 1e3, "p99_ms": lat["p99"] * 1e3, "steps": lat["steps"]}
    finally:
        proc.kill()
        proc.wait()


def _pixel_episode(t: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"actor": 0, "arrays": {"observation.state": rng.normal(size=(t + 1, 2)).astype(np.float32),
                                   "observation.images.top": rng.integers(0, 255, (t + 1, 84, 84, 3), dtype=np.uint8),
                                   "action": rng.uniform(-1, 1, (t, 2)).astype(np.float32),
                                   "reward": rng.normal(size=t).astype(np.float32), "terminated": np.zeros(t, bool),
                                   "truncated": np.zeros(t, bool), "is_success": np.zeros(t, bool)},
            "intervened": np.zeros(t, bool), "success": False, "true_success": False, "weights_version": -1}


def transport_rate(kind: str, episodes: int, work: Path, secret: bytes) -> dict:
    """Episodes/s from an actor link's outbox into the learner's inbox, in one process."""
    run_dir = work / f"transport-{kind}"
    run_dir.mkdir(exist_ok=True)
    if kind == "old":
        mod = old_module("transport")
        cfg = mod.TransportConfig(queue_episodes=episodes)
        server = mod.LearnerServer(cfg, run_dir, log=lambda m: None)
        link = mod.ActorClient(0, run_dir, cfg, address=(server.host, server.port), log=lambda m: None)
    else:
        from vlarl.runtime.transport import ActorClient, EpisodeSpec, LearnerServer, TransportConfig

        cfg = TransportConfig(queue_episodes=episodes)
        spec = EpisodeSpec(2, 2, {"top": (84, 84, 3)}, 30)
        server = LearnerServer(cfg, run_dir, secret, spec, max_actors=1, log=lambda m: None)
        link = ActorClient(0, run_dir, cfg, address=(server.host, server.port), log=lambda m: None, secret=secret)
    try:
        _wait(lambda: link.connected, 30, "the link")
        batch = [_pixel_episode(seed=i % 8) for i in range(episodes)]
        got = 0
        t0 = time.perf_counter()
        for ep in batch:
            link.send_episode(ep)
        while got < episodes:
            got += len(server.inbox.drain())
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
        mb = sum(a.nbytes for a in batch[0]["arrays"].values()) / 2**20
        return {"episodes_per_s": episodes / elapsed, "episode_mb": mb, "episodes": episodes}
    finally:
        link.close(flush_s=0)
        server.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bridge-steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=200)
    args = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.path.insert(0, str(Path(__file__).parent))
    secret = b"benchmark-secret-0123456789abcdef"
    out: dict = {"command": "python benchmarks/security.py " + " ".join(sys.argv[1:]), "old_commit": OLD_COMMIT,
                 "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rounds: dict[str, list] = {"bridge_old": [], "bridge_new": [], "transport_old": [], "transport_new": []}
        for r in range(args.rounds):  # interleaved, so drift of the machine hits both alike
            for kind in ("old", "new"):
                rounds[f"bridge_{kind}"].append(bridge_latency(kind, args.bridge_steps, secret))
                rounds[f"transport_{kind}"].append(transport_rate(kind, args.episodes, work, secret))
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]}" for k, v in rounds.items()), flush=True)
        med = {k: float(np.median([x["median_ms"] if k.startswith("bridge") else x["episodes_per_s"] for x in v]))
               for k, v in rounds.items()}
        out["cost"] = {
            "bridge_median_ms": {"old": med["bridge_old"], "new": med["bridge_new"],
                                 "ratio_new_over_old": med["bridge_new"] / med["bridge_old"]},
            "bridge_p99_ms": {k: float(np.median([x["p99_ms"] for x in rounds[f"bridge_{k}"]])) for k in ("old", "new")},
            "transport_episodes_per_s": {"old": med["transport_old"], "new": med["transport_new"],
                                         "ratio_new_over_old": med["transport_new"] / med["transport_old"]},
            "episode_mb": rounds["transport_new"][0]["episode_mb"], "rounds": rounds,
        }
        out["learner_attacks"] = attack_learner(work)
        print(json.dumps(out["learner_attacks"], indent=1), flush=True)
        out["robot_attacks"] = attack_robot(work)
        out["checkpoint_attacks"] = attack_run_directory(work)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "security.json").write_text(json.dumps(out, indent=2, default=str))
    (RESULTS / "security.md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    c = out["cost"]
    lines = ["# Security: attacks on loopback and the cost of the wire format", "",
             (f"`{out['command']}` on {out['machine']}; old format = the modules at {out['old_commit']} (pickle over "
             "multiprocessing.connection, key in the source)."), "",
             "## Cost, old vs new, interleaved rounds (median over rounds)", "",
             "| measure | old (pickle) | new (wire format) | new / old |", "|---|---|---|---|",
             (f"| robot bridge round trip per 84 px step, median (lower is better) | {c['bridge_median_ms']['old']:.3f} ms | "
             f"{c['bridge_median_ms']['new']:.3f} ms | {c['bridge_median_ms']['ratio_new_over_old']:.2f} |"),
             (f"| robot bridge p99 | {c['bridge_p99_ms']['old']:.3f} ms | {c['bridge_p99_ms']['new']:.3f} ms | "
             f"{c['bridge_p99_ms']['new'] / c['bridge_p99_ms']['old']:.2f} |"),
             (f"| transport, 30-step 84 px episodes ({c['episode_mb']:.2f} MB) actor -> learner (higher is better) | "
             f"{c['transport_episodes_per_s']['old']:.0f} /s | {c['transport_episodes_per_s']['new']:.0f} /s | "
             f"{c['transport_episodes_per_s']['ratio_new_over_old']:.2f} |"), ""]
    la = out["learner_attacks"]
    lines += ["## Against a training HIL-SERL learner (toy/reach, one actor process)", "",
              "| attack | outcome | learner alive | file created |", "|---|---|---|---|"]
    lines += [f"| {x['attack']} | {x['outcome']} | {x['learner_alive']} | {x['file_created']} |" for x in la["cases"]]
    r = la["run"]
    lines += ["", (f"The run finished with exit code {r['exit_code']} at {r['env_steps']} env steps, final success "
              f"{r['final_success']:.2f}; actor 0 joined {r['actor_joins']} time(s) (never displaced); "
              f"{r['refused_lines']} refusals logged with the peer's address; RUN/secret mode {r['secret_mode']}, "
              f"run directory {r['run_dir_mode']}; secret in the log: {r['secret_in_log']}."), ""]
    ra = out["robot_attacks"]
    lines += ["## Against `vlarl robot serve` (toy/reach, 84 px)", "",
              "| attack | outcome | server alive | legitimate client served in | file created |", "|---|---|---|---|---|"]
    lines += [f"| {x['attack']} | {x['outcome']} | {x['server_alive']} | {x['legit_client_s']} s | {x['file_created']} |"
              for x in ra["cases"]]
    lines += ["", f"Server alive at the end: {ra['server_alive_at_end']}; refusals logged: {ra['refused_lines']}.", ""]
    lines += ["## Crafted and damaged run directories (`vlarl train hil-serl --resume`)", "",
              "| case | exit code | file created | metrics.jsonl, results.json kept | what it said |", "|---|---|---|---|---|"]
    lines += [f"| {x['case']} | {x['exit_code']} | {x['file_created']} | {x['history_kept']} | "
              f"{x['outcome'].replace('|', '/')} |" for x in out["checkpoint_attacks"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
