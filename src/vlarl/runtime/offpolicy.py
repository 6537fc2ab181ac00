"""The off-policy loop: one schedule, one replay, one learner, any episode source.

RLPD, HIL-SERL and ConRFT are wirings of this loop; it knows no algorithm. A recipe hands
it a learner (``update(batch) -> scalars``, ``optimizers()``, ``env_steps``), a
``MixedReplay``, a ``to_batch`` that turns a sample into the learner's tensors, an
``evaluate(episodes, seed, video) -> figures`` and, to ``train``, an episode source
(``runtime.sources``).

The schedule, in one place (``Schedule``):

- ``warmup_steps``: env steps collected before the first update (RLPD's random steps);
- ``utd``: critic steps per env step, the update-to-data ratio (RLPD's G, HIL-SERL's rate);
  the learner never runs further ahead of the data than this, counted from the arrival that
  made learning possible (replay ready, warm-up over);
- ``actor_every``: critic steps per actor step; one learner update is that many critic
  steps on their own minibatches, then one actor step (HIL-SERL's critic-to-actor ratio);
- ``weights_every``: learner updates between weight broadcasts to the source.

Evaluation (the recipe's ``evaluate``, policy alone) runs at the start when asked, every
``eval_every`` env steps and once at the end. Checkpoints every ``save_every`` env steps (at
the first moment after it where the source can stop exactly), on Ctrl-C and at the end hold
weights, optimisers, random streams, counters, the replay (when ``save_buffer``) and the
source's state; ``restore`` continues a run where it stopped. ``offline_updates`` is a stage
of updates on the offline buffer alone before any env step (ConRFT's Cal-QL stage).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from vlarl.data.mixing import MixedReplay
from vlarl.errors import VlarlError
from vlarl.runtime.run import Run
from vlarl.runtime.seeding import Generator
from vlarl.runtime.sources import EpisodeSource


@dataclass
class Schedule:
    steps: int  # env steps to collect
    utd: float  # critic steps per env step
    actor_every: int  # critic steps per actor step (minibatches per learner update)
    warmup_steps: int = 0  # env steps before the first update
    weights_every: int = 1  # learner updates between weight broadcasts
    eval_every: int = 0  # env steps; 0: the final evaluation only
    eval_at_start: bool = False  # where the curve starts: the policy before any online update
    eval_episodes: int = 10
    final_eval: bool = True
    final_eval_episodes: int = 50
    eval_seed: int = 10_000
    final_eval_seed: int = 20_000
    save_every: int = 5_000  # env steps
    save_buffer: bool = True
    log_every: int = 100  # learner updates

    def __post_init__(self) -> None:
        if not self.utd > 0:
            raise VlarlError(f"schedule: utd (critic steps per env step) must be > 0, got {self.utd}")
        if self.actor_every < 1:
            raise VlarlError(f"schedule: actor_every (critic steps per actor step) must be >= 1, got {self.actor_every}")


Evaluate = Callable[[int, int, Any], dict[str, Any]]  # (episodes, seed, video path or None) -> figures


class OffPolicyLoop:
    """One run's learner side; ``restore`` first, then optional ``offline_updates``, then ``train``."""

    def __init__(self, run: Run, name: str, agent: torch.nn.Module, learner: Any, replay: MixedReplay,
                 schedule: Schedule, to_batch: Callable[[dict[str, Any]], Any], evaluate: Evaluate,
                 generators: Mapping[str, Generator], log: Callable[[str], None] | None = None,
                 progress: bool = True, video: Any = None) -> None:
        self.run, self.name, self.agent, self.learner, self.replay = run, name, agent, learner, replay
        self.schedule, self.to_batch, self.evaluate, self.generators = schedule, to_batch, evaluate, generators
        self.progress, self.video = progress, video
        self.events: list[str] = []
        self._log = log
        # learning_from: env steps before the arrival that made learning possible (None: not yet)
        self.counters: dict[str, Any] = {"env_steps": 0, "updates": 0, "critic_steps": 0, "learning_from": None,
                                         "episodes": 0, "intervened_steps": 0, "offline_updates": 0, "wall_s": 0.0}
        self.results: dict[str, Any] = {"evals": [], "episodes": []}
        self.source_state: dict[str, Any] | None = None
        self.resumed = False
        self._t_start = time.perf_counter()
        self._source: EpisodeSource | None = None

    def log(self, msg: str) -> None:
        self.events.append(msg)
        (self._log or (lambda m: tqdm.write(f"[{self.name}] {m}")))(msg)

    # --- checkpoints ------------------------------------------------------------------
    def restore(self, keep_results: tuple[str, ...] = ()) -> bool:
        """Load the run's newest checkpoint, if any: weights, optimisers, random streams,
        counters, the replay and the source's state; the results logged up to it (and the
        ``keep_results`` keys, a stage's figures) from results.json. True when resumed."""
        saved = self.run.restore({"agent": self.agent}, self.learner.optimizers(), self.generators)
        if not saved:
            return False
        saved = _upgrade_counters(saved, self.schedule)
        replay_state = saved.pop("buffers", None)
        if replay_state is not None:
            self.replay.load_state_dict(replay_state)
        self.source_state = saved.pop("source", None)
        if replay_state is None and self.source_state:  # the open episode's steps are in no buffer to retrace
            self.source_state["ep_len"] = 0
        self.results["evals"] = saved.pop("evals", [])
        self.counters.update(saved)
        path = self.run.path / "results.json"
        if path.exists():
            old = json.loads(path.read_text())
            steps = self.counters["env_steps"]
            self.results["evals"] = [e for e in old.get("evals", []) if e["step"] <= steps] or self.results["evals"]
            self.results["episodes"] = [e for e in old.get("episodes", []) if e["step"] <= steps]
            self.results.update({k: v for k, v in old.items() if k in keep_results})
        self.resumed = True
        return True

    def save(self) -> None:
        c = self.counters
        saved = {**c, "wall_s": self.wall_s}
        if self.schedule.save_buffer:
            saved["buffers"] = self.replay.state_dict()
        if self._source is not None and (state := self._source.state_dict()) is not None:
            saved["source"] = state
        self.run.save(c["env_steps"], {"agent": self.agent}, self.learner.optimizers(), saved, self.generators)
        # the curve so far; "partial" until the final figures are in (finish_stage, a resume read it)
        self.run.write_results({**self.results, "partial": True})

    def start_clock(self) -> None:
        """Training time counts from now (after the demos are recorded, say)."""
        self._t_start = time.perf_counter()

    @property
    def wall_s(self) -> float:
        """Training time of this run across its sessions."""
        return self.counters["wall_s"] + time.perf_counter() - self._t_start

    # --- an offline stage -------------------------------------------------------------
    def offline_updates(self, updates: int, counter: str = "offline_updates") -> dict[str, float]:
        """``updates`` learner updates on the offline buffer alone (``counter`` counts them
        across resumes); checkpointed four times along the way. Returns the last scalars."""
        s, c = self.schedule, self.counters
        assert self.replay.offline is not None
        bar = tqdm(total=updates, initial=c.get(counter, 0), desc=f"{self.name} offline", unit="upd",
                   disable=not self.progress)
        info: dict[str, float] = {}
        save_every = max(updates // 4, 1)
        while c.get(counter, 0) < updates:
            sample = self.replay.offline.sample(self.replay.batch_size, s.actor_every)
            info = {k: float(v) for k, v in self.learner.update(self.to_batch(sample)).items()}
            c[counter] = c.get(counter, 0) + 1
            bar.update(1)
            if c[counter] % s.log_every == 0:
                self.run.log(c[counter], **{f"offline/{k}": v for k, v in info.items()})
            if c[counter] % save_every == 0 and c[counter] < updates:
                self.save()
        bar.close()
        return info

    # --- the online loop --------------------------------------------------------------
    def _may_update(self) -> bool:
        s, c = self.schedule, self.counters
        if c["learning_from"] is None:
            return False
        return c["critic_steps"] + s.actor_every <= s.utd * (c["env_steps"] - c["learning_from"])

    def _store(self, collected: tuple[int, list[dict[str, Any]]], bar: tqdm) -> None:
        c = self.counters
        steps, rows = collected
        c["env_steps"] += steps
        bar.update(steps)
        ended = c["env_steps"] - sum(row["length"] for row in rows[1:])  # each episode at the step it ended
        for i, row in enumerate(rows):
            n = row["length"]
            if i:
                ended += n
            c["episodes"] += 1
            c["intervened_steps"] += row["intervened"]
            self.results["episodes"].append({"step": ended, "length": n, "return": row["return"],
                                             "success": row["success"], "true_success": row["true_success"],
                                             "intervention_rate": row["intervened"] / n, "actor": row["actor"]})
            self.run.log(ended, episode_return=row["return"], episode_length=n,
                         episode_success=float(row["success"]), episode_true_success=float(row["true_success"]),
                         intervention_rate=row["intervened"] / n)

    def _evaluate(self, episodes: int, seed: int, video: Any = None) -> dict[str, Any]:
        c = self.counters
        row = {"step": c["env_steps"], "updates": c["updates"], **self.evaluate(episodes, seed, video)}
        self.results["evals"].append(row)
        self.run.log(c["env_steps"], eval_success=row["success"])
        return row

    def train(self, source: EpisodeSource) -> dict[str, Any]:
        """Collect ``schedule.steps`` env steps from ``source`` and learn as the data comes;
        evaluate, checkpoint, and on Ctrl-C save and re-raise. ``source`` is closed at the end."""
        s, c = self.schedule, self.counters
        self._source = source
        source.publish(c["updates"], c["env_steps"])
        next_eval = (c["env_steps"] // s.eval_every + 1) * s.eval_every if s.eval_every else math.inf
        next_save = (c["env_steps"] // s.save_every + 1) * s.save_every
        bar = tqdm(total=s.steps, initial=c["env_steps"], desc=self.name, unit="step", disable=not self.progress)
        if s.eval_at_start and not self.results["evals"]:
            self._evaluate(s.eval_episodes, s.eval_seed)
        # Ctrl-C sets a flag the loop checks between steps, instead of raising wherever the main
        # thread happens to be (inside a lock, a socket send or a checkpoint write), so the
        # shutdown below always starts from a known state.
        interrupted = threading.Event()
        previous_handler = _on_sigint(interrupted.set)
        info: dict[str, Any] = {}
        # updates per turn of the loop: the critic steps one env step earns (RLPD: G critic steps
        # and one actor step), so an in-process source stepping once a turn is kept up with
        per_turn = max(1, math.ceil(s.utd / s.actor_every))
        try:
            while c["env_steps"] < s.steps:
                if interrupted.is_set() and source.can_checkpoint:
                    raise KeyboardInterrupt
                before = c["env_steps"]
                self._store(source.collect(), bar)
                if c["learning_from"] is None and c["env_steps"] >= s.warmup_steps and self.replay.ready():
                    c["learning_from"] = before  # the data that made learning possible counts
                updated = False
                for _ in range(per_turn):  # at most one env step's worth, then the source again
                    if not self._may_update():
                        break
                    self.learner.env_steps = c["env_steps"]  # schedules (ConRFT's beta) follow the env steps
                    info = self.learner.update(self.to_batch(self.replay.sample(s.actor_every)))
                    updated = True
                    c["updates"] += 1
                    c["critic_steps"] += s.actor_every
                    if c["updates"] % s.weights_every == 0:
                        source.publish(c["updates"], c["env_steps"])
                    if c["updates"] % s.log_every == 0:
                        self.run.log(c["env_steps"], updates=c["updates"], **{k: float(v) for k, v in info.items()},
                                     **source.stats())
                if not updated and source.waits_for_data:
                    time.sleep(0.005)
                if c["env_steps"] >= next_eval and c["env_steps"] < s.steps:
                    bar.set_postfix(success=f"{self._evaluate(s.eval_episodes, s.eval_seed)['success']:.2f}")
                    next_eval += s.eval_every
                if c["env_steps"] >= next_save and source.can_checkpoint:
                    self.save()
                    next_save = (c["env_steps"] // s.save_every + 1) * s.save_every
        except KeyboardInterrupt:
            self.log("interrupted: saving a checkpoint and stopping the source")
            self.save()
            source.close()
            bar.close()
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        wall = self.wall_s
        stats = source.stats()
        source.close()
        self.save()
        final = self._evaluate(s.final_eval_episodes, s.final_eval_seed, self.video) if s.final_eval else None
        self.results.update(
            final_success=final["success"] if final else None, final_ci95=final["ci95"] if final else None,
            final_mean_length=final["mean_length"] if final else None, video=(final or {}).get("video"),
            env_steps=c["env_steps"], updates=c["updates"], critic_steps=c["critic_steps"],
            num_episodes=c["episodes"], intervention_rate=c["intervened_steps"] / max(c["env_steps"], 1),
            wall_clock_min=wall / 60, seconds=wall, actor_hz=stats.get("actor_hz"),
            dropped_episodes=int(stats.get("dropped_episodes", 0)), resumed_from=self.run.resumed_step,
            bytes_per_transition=self.replay.bytes_per_transition, events=self.events[-50:])
        self.run.write_results(self.results)
        return self.results


def _upgrade_counters(saved: dict[str, Any], s: Schedule) -> dict[str, Any]:
    """Counters of a checkpoint written before this loop (RLPD's and HIL-SERL's own loops)."""
    saved = dict(saved)
    if "step" in saved and "env_steps" not in saved:  # RLPD: one update per env step after the warm-up
        steps = saved.pop("step")
        saved["env_steps"] = steps
        saved["source"] = {"episodes": saved["episodes"], "steps": steps, "ep_len": saved.pop("ep_len", 0)}
        if "buffer" in saved:
            saved["buffers"] = saved.pop("buffer")
        started = max(s.warmup_steps - 1, 0)
        saved["updates"] = max(steps - started, 0) if steps >= s.warmup_steps else 0
        saved["learning_from"] = started if steps >= s.warmup_steps else None
        saved["critic_steps"] = saved["updates"] * s.actor_every
    if "actor" in saved:  # HIL-SERL's in-process actor
        saved["source"] = saved.pop("actor")
    saved.setdefault("critic_steps", saved.get("updates", 0) * s.actor_every)
    if "learning_from" not in saved:  # HIL-SERL counted its budget from the first env step
        saved["learning_from"] = 0 if saved.get("updates") else None
    return saved


def _on_sigint(callback: Callable[[], None]) -> Any:
    """Call ``callback`` on SIGINT (main thread only); returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda *_: callback())
