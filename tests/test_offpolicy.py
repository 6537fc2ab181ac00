"""The off-policy loop's schedule, checkpoints and config migration, with a scripted source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlarl.data.mixing import MixedReplay
from vlarl.data.replay import ReplayBuffer
from vlarl.runtime import Run
from vlarl.runtime.offpolicy import OffPolicyLoop, Schedule


class CountingLearner:
    """Records the minibatches of each update; trains nothing."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, int]] = []  # (minibatches, env steps when called)
        self.env_steps = 0
        self.param = torch.nn.Parameter(torch.zeros(1))

    def optimizers(self) -> dict:
        return {}

    def update(self, batches):
        self.updates.append((len(batches), self.env_steps))
        return {"loss": torch.tensor(0.0)}


class EpisodesOf:
    """Whole episodes of ``length`` steps, one per ``collect``."""

    def __init__(self, replay: MixedReplay, length: int) -> None:
        self.replay, self.length, self.published = replay, length, []

    waits_for_data = False
    can_checkpoint = True

    def collect(self):
        t = self.length
        arrays = {"observation.state": np.zeros((t + 1, 2), np.float32), "action": np.zeros((t, 1), np.float32),
                  "reward": np.zeros(t, np.float32), "terminated": np.zeros(t, bool)}
        self.replay.add_episode(arrays, np.zeros(t, bool))
        return t, [{"length": t, "return": 0.0, "success": False, "true_success": False, "intervened": 0, "actor": 0}]

    def publish(self, version, env_steps):
        self.published.append(version)

    def state_dict(self):
        return None

    def stats(self):
        return {}

    def close(self):
        pass


def _loop(tmp_path, schedule: Schedule, batch_size: int = 8):
    from vlarl.recipes.rlpd import RLPDConfig

    run = Run.create(tmp_path, "run", RLPDConfig(run_dir=str(tmp_path / "run")))
    replay = MixedReplay(ReplayBuffer(1000, 2, 1, seed=0), None, batch_size, 0.0)
    learner = CountingLearner()
    loop = OffPolicyLoop(run, "test", torch.nn.Linear(1, 1), learner, replay, schedule, lambda s: list(s["action"]),
                         lambda n, seed, video: {"success": 0.0, "ci95": [0.0, 1.0], "mean_length": 1.0},
                         {"gen": torch.Generator().manual_seed(0)}, log=lambda _m: None, progress=False)
    return loop, learner, replay


def test_the_schedule_keeps_critic_steps_per_env_step_and_actor_every(tmp_path):
    # utd 3 critic steps per env step, 2 per actor step (one update = 2 minibatches); one step a turn
    s = Schedule(steps=100, utd=3.0, actor_every=2, warmup_steps=25, save_every=1000, final_eval=False,
                 weights_every=5)
    loop, learner, replay = _loop(tmp_path, s)
    source = EpisodesOf(replay, 1)
    results = loop.train(source)
    assert all(n == 2 for n, _ in learner.updates)  # each update: actor_every critic minibatches
    # learning starts with the arrival that ended the warm-up (the 25th step), never ahead of 3 per step after
    assert loop.counters["learning_from"] == 24
    assert min(step for _, step in learner.updates) == 25
    assert all(2 * (i + 1) <= 3 * (step - 24) for i, (_, step) in enumerate(learner.updates))
    assert results["critic_steps"] == 2 * len(learner.updates) == 228  # 3 x 76, kept up with to the end
    assert source.published[0] == 0 and source.published[1:] == list(range(5, len(learner.updates) + 1, 5))


def test_the_loop_waits_for_a_ready_replay_and_resumes_its_counters(tmp_path):
    s = Schedule(steps=40, utd=1.0, actor_every=1, save_every=20, final_eval=False)
    loop, learner, replay = _loop(tmp_path, s, batch_size=25)  # ready once 25 transitions are stored
    loop.train(EpisodesOf(replay, 10))
    assert loop.counters["learning_from"] == 20  # the third episode made 30 >= 25 rows
    assert min(step for _, step in learner.updates) == 30
    assert [e["step"] for e in loop.results["episodes"]] == [10, 20, 30, 40]  # each at the step it ended
    again, learner2, replay2 = _loop(tmp_path / "again", s, batch_size=25)
    again.run = Run.resume(tmp_path / "run", type(loop.run.config))
    assert again.restore()
    assert again.counters["env_steps"] == 40 and again.counters["updates"] == loop.counters["updates"]
    assert len(replay2.online) == 40


def test_a_schedule_refuses_a_rate_it_cannot_keep():
    from vlarl.errors import VlarlError

    with pytest.raises(VlarlError, match="utd"):
        Schedule(steps=1, utd=0.0, actor_every=1)
    with pytest.raises(VlarlError, match="actor_every"):
        Schedule(steps=1, utd=1.0, actor_every=0)


def test_an_old_hil_serl_config_with_updates_per_step_loads_as_the_same_schedule(tmp_path):
    from vlarl.recipes.conrft import ConRFTRecipeConfig
    from vlarl.recipes.hil_serl import HILSERLConfig
    from vlarl.runtime import load_config

    old = tmp_path / "config.yaml"
    old.write_text("updates_per_step: 1.5\nsac:\n  utd: 4\n")
    cfg = load_config(HILSERLConfig, old)
    assert cfg.sac.utd == 6.0 and cfg.sac.critic_steps_per_actor_step() == 4
    old.write_text("updates_per_step: 1.0\n")  # the recipe's own default sac.utd (2) was the per-update count
    cfg = load_config(ConRFTRecipeConfig, old)
    assert cfg.sac.utd == 2.0 and cfg.sac.critic_steps_per_actor_step() == 2
