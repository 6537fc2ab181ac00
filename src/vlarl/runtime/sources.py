"""Where an off-policy learner's transitions come from: one env here, or actors elsewhere.

Both sources write what they collect into a ``MixedReplay`` (the online buffer, and the
intervened segments into the demo buffer) and return one row per finished episode for the
loop to log. Both take the weights the loop publishes.

- ``LocalSource``: one env in this process, stepped between learner updates with the
  learner's own agent (debugging, deterministic tests, RLPD's loop). ``whole_episodes``:
  each episode enters the replay when it ends, as an actor process ships it (the Monte-Carlo
  returns are then complete before any row is sampled); otherwise every step enters as it
  happens, as RLPD's reference does.
- ``RemoteSource``: actor processes on this machine, or Ray actors on a cluster, shipping
  whole episodes over the transport (``LearnerServer``); started and restarted by an
  ``ActorLauncher``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from vlarl.data.mixing import MixedReplay
from vlarl.runtime.actor import ActorParts, EpisodeStream
from vlarl.runtime.launcher import ActorLauncher
from vlarl.runtime.transport import LearnerServer


class EpisodeSource(Protocol):
    def collect(self) -> tuple[int, list[dict[str, Any]]]:
        """Advance; store what arrived in the replay. Returns the env steps stored and one row
        per episode that ended."""

    def publish(self, version: int, env_steps: int) -> None:
        """The learner's newest weights (``version``: its update count) and the run's progress."""

    @property
    def can_checkpoint(self) -> bool:
        """Whether a checkpoint taken now resumes exactly (nothing half-stored)."""

    @property
    def waits_for_data(self) -> bool:
        """True when data arrives on its own (actors): the loop sleeps instead of spinning."""

    def state_dict(self) -> dict[str, Any] | None: ...

    def stats(self) -> dict[str, float]: ...

    def close(self) -> None: ...


def _episode_row(length: int, ret: float, success: bool, true_success: bool, intervened: int,
                 actor: int) -> dict[str, Any]:
    return {"length": length, "return": ret, "success": bool(success), "true_success": bool(true_success),
            "intervened": intervened, "actor": actor}


class LocalSource:
    """``parts.env`` stepped here with ``parts.act``; episode ``i`` starts from
    ``reset(seed=parts.seed + i)``. The first ``random_steps`` env steps take
    ``random_action()`` instead when it is given (exploration before any data)."""

    def __init__(self, parts: ActorParts, replay: MixedReplay, whole_episodes: bool,
                 random_action: Callable[[], np.ndarray] | None = None, random_steps: int = 0,
                 state: Mapping[str, Any] | None = None) -> None:
        self.parts, self.replay, self.whole_episodes = parts, replay, whole_episodes
        self.random_action, self.random_steps = random_action, random_steps
        self._done: list[dict[str, Any]] = []
        # the episode's arrays are kept only where something needs them whole
        self._record = whole_episodes or replay.offline_grows
        self._stream = EpisodeStream(self._done.append, actor_id=0)
        self.steps = self.episodes = 0
        self._ep_len, self._ep_return, self._ep_success, self._ep_true, self._ep_intervened = 0, 0.0, False, False, 0
        self._t0 = time.perf_counter()
        self._steps_at_start = 0
        if state is not None:
            self._resume(state)
        else:
            self._start_episode()

    @property
    def waits_for_data(self) -> bool:
        return False

    @property
    def can_checkpoint(self) -> bool:
        # whole episodes: an open one is in no buffer yet, so only between episodes is a
        # checkpoint the state an uninterrupted run passes through
        return not self.whole_episodes or self._ep_len == 0

    def _start_episode(self) -> None:
        self.obs, _ = self.parts.env.reset(seed=self.parts.seed + self.episodes)
        if self._record:
            self._stream.start(self.obs)
        if not self.whole_episodes:
            self.replay.online.start_episode(self.obs)
        self._ep_len, self._ep_return, self._ep_success, self._ep_true, self._ep_intervened = 0, 0.0, False, False, 0

    def collect(self) -> tuple[int, list[dict[str, Any]]]:
        """One env step."""
        if self.random_action is not None and self.steps < self.random_steps:
            action = self.random_action()
        else:
            action = self.parts.act(self.obs)
        obs, reward, terminated, truncated, info = self.parts.env.step(action)
        if self._record:
            self._stream.add(action, reward, obs, terminated, truncated, info)
        if not self.whole_episodes:
            self.replay.online.add(info.get("intervention_action", action), float(reward), obs, terminated, truncated)
        self.steps += 1
        self._ep_len += 1
        self._ep_return += float(reward)
        self._ep_success = self._ep_success or bool(info["is_success"])
        self._ep_true = self._ep_true or bool(info.get("true_success", info["is_success"]))
        self._ep_intervened += int(bool(info.get("intervened", False)))
        self.obs = obs
        if not (terminated or truncated):
            return (0 if self.whole_episodes else 1), []
        if self._record:
            episode = self._done.pop()
            if self.whole_episodes:
                self.replay.add_episode(episode["arrays"], episode["intervened"])
            else:
                self.replay.add_interventions(episode["arrays"], episode["intervened"])
        row = _episode_row(self._ep_len, self._ep_return, self._ep_success, self._ep_true, self._ep_intervened, 0)
        self.episodes += 1
        self._start_episode()
        return (row["length"] if self.whole_episodes else 1), [row]

    def publish(self, version: int, env_steps: int) -> None:
        # the agent is the learner's own: only the run's progress to pass on (the simulated human's decay)
        self.parts.load({"state_dict": None, "env_steps": env_steps})

    def state_dict(self) -> dict[str, Any]:
        """The episode count (the next reset's seed), the open episode's progress and the random
        streams of the env's intervention devices (the simulated human's tremor)."""
        return {"episodes": self.episodes, "steps": self.steps, "ep_len": self._ep_len, "ep_return": self._ep_return,
                "ep_success": self._ep_success, "rngs": [g.bit_generator.state for g in self._generators()]}

    def _resume(self, state: Mapping[str, Any]) -> None:
        generators = self._generators()
        if len(generators) == len(state.get("rngs", [])):  # else the run was resumed with other devices
            for gen, saved in zip(generators, state["rngs"]):
                gen.bit_generator.state = saved
        self.episodes, self.steps = state["episodes"], state.get("steps", 0)
        self._steps_at_start = self.steps
        open_steps = state.get("ep_len", 0)
        if self.whole_episodes or not open_steps:
            self._start_episode()  # an episode cut short by the stop starts over (none is, between episodes)
            return
        self._retrace(open_steps, state)

    def _retrace(self, steps: int, state: Mapping[str, Any]) -> None:
        """Step the episode open at the checkpoint through its first ``steps`` actions, read back
        from the online buffer (nothing stored, no random number drawn), so the run goes on
        exactly as an uninterrupted one. An env that does not retrace the stored states starts
        the episode over instead, and says so."""
        buf = self.replay.online

        def same(obs: Mapping[str, Any], k: int) -> bool:  # as the buffer stored it (float32)
            return np.array_equal(np.asarray(obs["state"], buf.state.dtype), buf.state[k % buf.capacity])

        obs, _ = self.parts.env.reset(seed=self.parts.seed + self.episodes)
        slot = buf.ptr - 1 - steps  # the episode's first frame
        retraced = same(obs, slot)
        for i in range(steps if retraced else 0):
            obs, _, terminated, truncated, _ = self.parts.env.step(buf.action[(slot + i) % buf.capacity])
            retraced = same(obs, slot + i + 1) and not (terminated or truncated)
            if not retraced:
                break
        if not retraced:
            print(f"the env did not retrace the {steps} steps of the episode in progress at the checkpoint; it "
                  "starts over, so this run no longer matches an uninterrupted one", flush=True)
            self._start_episode()
            return
        self.obs = obs
        self._ep_len, self._ep_return = steps, state.get("ep_return", 0.0)
        self._ep_success = self._ep_true = state.get("ep_success", False)
        self._ep_intervened = 0

    def _generators(self) -> list[np.random.Generator]:
        out, env = [], self.parts.env
        while env is not None:  # the wrapper chain, outermost first
            rng = getattr(getattr(env, "device", None), "rng", None)
            if isinstance(rng, np.random.Generator):
                out.append(rng)
            env = getattr(env, "env", None)
        return out

    def stats(self) -> dict[str, float]:
        return {"actor_hz": (self.steps - self._steps_at_start) / max(time.perf_counter() - self._t0, 1e-9)}

    def close(self) -> None:
        self.parts.env.close()


class RemoteSource:
    """Actors in other processes (``runtime``: multiprocess or ray) over the transport."""

    def __init__(self, server: LearnerServer, launcher: ActorLauncher, replay: MixedReplay,
                 acting_state: Callable[[], dict[str, Any]], log: Callable[[str], None], stall_s: float,
                 address: tuple[str, int]) -> None:
        self.server, self.launcher, self.replay = server, launcher, replay
        self.acting_state, self.log, self.stall_s = acting_state, log, stall_s
        self._last_data = time.monotonic()
        launcher.ensure(address)

    waits_for_data = True
    can_checkpoint = True

    def collect(self) -> tuple[int, list[dict[str, Any]]]:
        rows = []
        for _, ep in self.server.inbox.drain():
            self.replay.add_episode(ep["arrays"], ep["intervened"])
            arrays = ep["arrays"]
            rows.append(_episode_row(len(arrays["action"]), float(np.sum(arrays["reward"])), ep["success"],
                                     ep["true_success"], int(ep["intervened"].sum()), ep["actor"]))
        self.launcher.watch()
        now = time.monotonic()
        if rows:
            self._last_data = now
        elif now - self._last_data > self.stall_s:
            self.log(f"no episode from any actor for {now - self._last_data:.0f} s (connected: {self.server.connected}); "
                     f"check the actor logs in {self.launcher.run_dir / 'actors'}")
            self._last_data = now
        return sum(r["length"] for r in rows), rows

    def publish(self, version: int, env_steps: int) -> None:
        self.server.publish(version, {"state_dict": self.acting_state(), "env_steps": env_steps})

    def state_dict(self) -> None:
        return None  # actors keep their own state; an episode in flight at a stop is lost

    def stats(self) -> dict[str, float]:
        fresh = [s for s in list(self.server.actor_stats.values()) if "hz" in s and time.time() - s["received"] < 10]
        out = {"dropped_episodes": float(self.server.inbox.dropped)}
        if fresh:
            out.update(actor_hz=float(np.mean([s["hz"] for s in fresh])),
                       actor_dropped=float(sum(s["dropped"] for s in fresh)),
                       actors_connected=float(len(self.server.connected)))
        return out

    def close(self) -> None:
        self.server.stop_actors()
        self.launcher.stop()
        self.server.close()
