"""Starts, watches and stops actor processes (local subprocesses or Ray tasks).

An actor is described by a parts spec, ``package.module:function``, that builds its env and
policy from the run directory (see ``vlarl.runtime.actor``). Local actors are plain child
processes (``python -m vlarl.runtime.actor``), logging to ``RUN/actors/actor-<id>.log``.
Actors left running by a learner that was killed are found by their status file and kept:
they are still stepping and reconnect with what they buffered. Ray actors run the same loop
as tasks on any node; the run directory must be readable there (shared storage) for the
parts to find the config.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlarl.runtime.actor import read_status


class ActorLauncher:
    def __init__(self, runtime: str, run_dir: str | Path, parts: str, actors: int, respawn: bool = True,
                 ray_address: str | None = None, log: Callable[[str], None] = print,
                 secret: bytes | None = None) -> None:
        self.runtime, self.run_dir, self.parts = runtime, Path(run_dir), parts
        self.secret = secret  # handed to Ray actors, which may not see RUN/secret; local ones read it there
        self.actors, self.respawn, self.log = actors, respawn, log
        self.procs: dict[int, Any] = {}
        self._ray_refs: dict[int, Any] = {}
        self._address: tuple[str, int] | None = None
        (self.run_dir / "actors").mkdir(parents=True, exist_ok=True)
        if runtime == "ray":
            import ray

            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            if not ray.is_initialized():
                ray.init(address=ray_address, include_dashboard=False, log_to_driver=False,
                         num_cpus=None if ray_address else actors + 1)

    def ensure(self, address: tuple[str, int]) -> None:
        """Start every actor that is not running; ``address`` is the learner's."""
        self._address = address
        for i in range(self.actors):
            if i in self.procs or i in self._ray_refs:
                continue
            status = read_status(self.run_dir, i)
            if self.runtime == "multiprocess" and status and alive(status.get("pid")):
                self.log(f"actor {i} (pid {status['pid']}) is still running from before; it will reconnect")
                self.procs[i] = _Orphan(int(status["pid"]))
                continue
            self.start(i)

    def start(self, actor_id: int) -> None:
        if self.runtime == "ray":
            self._ray_refs[actor_id] = _ray_actor().remote(self.parts, str(self.run_dir), actor_id, self._address,
                                                           self.secret)
            return
        cmd = [sys.executable, "-m", "vlarl.runtime.actor", "--run-dir", str(self.run_dir),
               "--actor-id", str(actor_id), "--parts", self.parts]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(self.run_dir / "actors" / f"actor-{actor_id}.log", "a") as log_file:
            self.procs[actor_id] = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)

    def watch(self) -> None:
        """Notice actors that died; start replacements when ``respawn``."""
        for i, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                self.log(f"actor {i} exited (code {code})" + ("; starting a new one" if self.respawn else ""))
                del self.procs[i]
                if self.respawn:
                    self.start(i)
        if self._ray_refs:
            import ray

            done, _ = ray.wait(list(self._ray_refs.values()), num_returns=len(self._ray_refs), timeout=0)
            for i, ref in list(self._ray_refs.items()):
                if ref not in done:
                    continue
                try:
                    msg = f"finished after {ray.get(ref)['steps']} steps"
                except Exception as err:  # noqa: BLE001 - a remote failure is reported, never fatal here
                    msg = f"failed: {err}"
                self.log(f"ray actor {i} {msg}")
                del self._ray_refs[i]
                if self.respawn:
                    self.start(i)

    def stop(self, grace_s: float = 10.0) -> None:
        """Wait up to ``grace_s`` for actors to leave (they were asked to), then end them."""
        self.respawn = False
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        if self._ray_refs:
            import ray

            refs = list(self._ray_refs.values())
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=grace_s)
            for ref in pending:  # cancelling a task that already replied can crash Ray's core worker
                ray.cancel(ref, force=True)
            self._ray_refs.clear()


class _Orphan:
    """An actor process started by an earlier learner (not our child), watched by pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> int | None:
        return None if alive(self.pid) else -1

    def terminate(self) -> None:
        _signal(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        _signal(self.pid, signal.SIGKILL)

    def wait(self, timeout: float = 0.0) -> int:
        deadline = time.monotonic() + timeout
        while alive(self.pid):
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.1)
        return -1


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _ray_actor():
    import ray

    @ray.remote(num_cpus=1, max_retries=0)  # the launcher respawns actors itself; a Ray retry would duplicate one
    def ray_actor(parts_spec: str, run_dir: str, actor_id: int, address: tuple[str, int],
                  secret: bytes | None) -> dict[str, Any]:
        import torch

        from vlarl.runtime.actor import build_parts, run_actor

        torch.set_num_threads(1)
        return run_actor(build_parts(parts_spec, run_dir, actor_id), actor_id, run_dir, address=address, secret=secret)

    return ray_actor
