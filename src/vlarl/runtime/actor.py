"""The actor: steps an env with the latest policy, ships whole episodes, never waits.

The loop knows no algorithm. A recipe hands it ``ActorParts``: an env (already wrapped with
interventions, reward classifier, frames...), ``act(obs) -> action`` and
``load(payload)`` for the weights the learner publishes. Episodes go out whole (so the
learner can store every frame once); ``info["intervened"]`` marks the steps a human drove.

Run as a process: ``python -m vlarl.runtime.actor --run-dir RUN --actor-id 0 --parts
package.module:function``; ``function(run_dir, actor_id)`` builds the parts. The actor
writes ``RUN/actors/actor-<id>.json`` (pid, steps, control rate, link state) every second.
It exits when the learner says stop, on Ctrl-C, or after ``orphan_timeout_s`` without a
learner (so a crashed run leaves no process behind for ever).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlarl.data.episodes import EpisodeRecorder
from vlarl.fileio import atomic_write_text
from vlarl.runtime.transport import ActorClient, TransportConfig


@dataclass
class ActorParts:
    env: Any  # a gymnasium env
    act: Callable[[dict[str, Any]], np.ndarray]
    load: Callable[[Any], None]  # takes the learner's weights payload
    transport: TransportConfig = field(default_factory=TransportConfig)
    seed: int = 0
    control_hz: float | None = None  # pace the loop like a real robot; None: as fast as it goes
    orphan_timeout_s: float = 300.0
    # name -> (dtype, shape) of the weights ``load`` takes (``transport.weights_spec``): weights
    # that differ are refused before they reach the policy; None: any arrays
    weights_spec: Mapping[str, tuple[str, tuple[int, ...]]] | None = None


def status_path(run_dir: str | Path, actor_id: int) -> Path:
    return Path(run_dir) / "actors" / f"actor-{actor_id}.json"


def read_status(run_dir: str | Path, actor_id: int) -> dict[str, Any] | None:
    try:
        return json.loads(status_path(run_dir, actor_id).read_text())
    except (OSError, ValueError):
        return None


class EpisodeStream:
    """Builds episodes from steps and hands finished ones to ``ship`` (the actor side of both
    the in-process and the socket runtimes)."""

    def __init__(self, ship: Callable[[dict[str, Any]], None], actor_id: int) -> None:
        self.ship, self.actor_id = ship, actor_id
        self._rec: EpisodeRecorder | None = None
        self._intervened: list[bool] = []
        self._true_success = False
        self.weights_version = -1

    def start(self, obs: dict[str, Any]) -> None:
        self._rec, self._intervened, self._true_success = EpisodeRecorder(obs), [], False

    def add(self, action: np.ndarray, reward: float, next_obs: dict[str, Any], terminated: bool, truncated: bool,
            info: dict[str, Any]) -> None:
        assert self._rec is not None
        executed = info.get("intervention_action", action)
        self._rec.add(executed, reward, next_obs, terminated, truncated, bool(info["is_success"]))
        self._intervened.append(bool(info.get("intervened", False)))
        self._true_success = self._true_success or bool(info.get("true_success", info["is_success"]))
        if terminated or truncated:
            arrays = self._rec.arrays()
            self.ship({"actor": self.actor_id, "arrays": arrays, "intervened": np.asarray(self._intervened),
                       "success": bool(arrays["is_success"].any()), "true_success": self._true_success,
                       "weights_version": self.weights_version})
            self._rec = None


class EnvStepper:
    """One actor step at a time: act, step the env, record, reset at episode end. Shared by
    the actor process loop and the in-process runtime."""

    def __init__(self, parts: ActorParts, ship: Callable[[dict[str, Any]], None], actor_id: int) -> None:
        self.parts = parts
        self.stream = EpisodeStream(ship, actor_id)
        self.steps = self.episodes = self.interventions = 0
        self.obs, _ = parts.env.reset(seed=parts.seed)
        self.stream.start(self.obs)

    def step(self) -> None:
        action = self.parts.act(self.obs)
        obs, reward, terminated, truncated, info = self.parts.env.step(action)
        self.stream.add(action, reward, obs, terminated, truncated, info)
        self.steps += 1
        self.interventions += int(bool(info.get("intervened", False)))
        self.obs = obs
        if terminated or truncated:
            self.episodes += 1
            self.obs, _ = self.parts.env.reset(seed=self.parts.seed + self.episodes)
            self.stream.start(self.obs)

    def counters(self) -> dict[str, Any]:
        return {"steps": self.steps, "episodes": self.episodes, "interventions": self.interventions,
                "weights_version": self.stream.weights_version, "pid": os.getpid()}


def run_actor(parts: ActorParts, actor_id: int, run_dir: str | Path, max_steps: int | None = None,
              address: tuple[str, int] | None = None, log: Callable[[str], None] = print,
              secret: bytes | None = None) -> dict[str, Any]:
    """The actor loop over a socket link to the learner (found through ``run_dir`` unless
    ``address`` is given; its secret read from ``run_dir`` unless ``secret`` is given);
    returns its final counters."""
    link = ActorClient(actor_id, run_dir, parts.transport, address=address, log=log, secret=secret,
                       weights_spec=parts.weights_spec)
    stepper: EnvStepper | None = None
    period = 1.0 / parts.control_hz if parts.control_hz else 0.0
    rate = _Rate()
    next_status = 0.0
    try:
        stepper = EnvStepper(parts, link.send_episode, actor_id)
        while not link.stop_requested.is_set() and (max_steps is None or stepper.steps < max_steps):
            t0 = time.perf_counter()
            weights = link.latest_weights()
            if weights is not None:
                parts.load(weights[1])
                stepper.stream.weights_version = weights[0]
            stepper.step()
            rate.tick()
            now = time.monotonic()
            if now >= next_status and rate.measured:  # from the second step on: a rate needs two ticks
                stats = {**stepper.counters(), "hz": rate.hz, "connected": link.connected, "outbox": len(link.outbox),
                         "dropped": link.outbox.dropped, "disconnects": link.disconnects, "time": time.time()}
                link.set_stats(stats)
                atomic_write_text(status_path(run_dir, actor_id), json.dumps(stats))
                next_status = now + 1.0
                if not link.connected and now - link.last_contact > parts.orphan_timeout_s:
                    log(f"actor {actor_id}: no learner for {parts.orphan_timeout_s:.0f} s; exiting")
                    break
            if period:
                time.sleep(max(0.0, period - (time.perf_counter() - t0)))
    except KeyboardInterrupt:
        pass
    finally:
        link.close()
        parts.env.close()
    if stepper is None:
        return {"steps": 0, "episodes": 0, "interventions": 0, "weights_version": -1, "pid": os.getpid()}
    return stepper.counters()


class _Rate:
    """Steps per second over the last few seconds."""

    def __init__(self, window: int = 50) -> None:
        self._times: list[float] = []
        self.window = window

    def tick(self) -> None:
        self._times.append(time.perf_counter())
        del self._times[: -self.window]

    @property
    def measured(self) -> bool:
        return len(self._times) >= 2

    @property
    def hz(self) -> float:
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)


def build_parts(spec: str, run_dir: str, actor_id: int) -> ActorParts:
    """``package.module:function`` -> ``function(run_dir, actor_id)``."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)(run_dir, actor_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlarl.runtime.actor", description="a vlarl actor process")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--actor-id", type=int, required=True)
    p.add_argument("--parts", required=True, help="package.module:function building the actor's parts")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # actors share the machine with the learner: no oversubscription

    def log(msg: str) -> None:
        print(f"[actor {args.actor_id}] {msg}", flush=True)

    try:
        parts = build_parts(args.parts, args.run_dir, args.actor_id)
    except KeyboardInterrupt:
        return 130
    counters = run_actor(parts, args.actor_id, args.run_dir, log=log)
    log(f"stopped after {counters['steps']} steps, {counters['episodes']} episodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
