"""HIL-SERL pieces: queues, buffers routing, simulated human, wrappers, devices, classifier,
and an in-process learning run. Process kills are in test_runtime_faults.py."""

import numpy as np
import pytest
import torch

from vlarl.envs import make
from vlarl.envs.intervention import InterventionWrapper, SimulatedHuman, SimulatedHumanConfig, expert_of
from vlarl.errors import VlarlError
from vlarl.recipes.collect import EnvConfig
from vlarl.runtime.transport import BoundedQueue


def test_bounded_queue_never_blocks_drops_oldest_and_counts():
    q = BoundedQueue(3)
    for i in range(5):
        q.put(i)
    assert q.dropped == 2 and q.drain() == [2, 3, 4] and q.get() is None
    q.put("a")
    q.put("b")
    q.putleft("x")  # a failed send goes back to the front
    assert q.drain() == ["x", "a", "b"]


def test_intervened_segments_and_episode_slices():
    from vlarl.data.mixing import intervened_segments, slice_episode

    mask = np.array([0, 1, 1, 0, 0, 1, 1, 1], bool)
    assert intervened_segments(mask) == [(1, 3), (5, 8)]
    assert intervened_segments(np.zeros(4, bool)) == []
    arrays = {"observation.state": np.arange(9)[:, None].astype(np.float32), "action": np.arange(8)[:, None] * 10.0,
              "reward": np.arange(8.0), "terminated": np.zeros(8, bool), "truncated": np.zeros(8, bool),
              "is_success": np.zeros(8, bool)}
    seg = slice_episode(arrays, 5, 8)
    assert seg["observation.state"][:, 0].tolist() == [5, 6, 7, 8]  # T + 1 observations
    assert seg["action"][:, 0].tolist() == [50, 60, 70] and seg["reward"].tolist() == [5, 6, 7]


def test_interventions_go_to_both_buffers_policy_steps_to_the_rl_buffer_only():
    from vlarl.data.mixing import MixedReplay
    from vlarl.data.replay import ReplayBuffer

    t = 6
    arrays = {"observation.state": np.arange(t + 1)[:, None].repeat(2, 1).astype(np.float32),
              "action": np.arange(t)[:, None].astype(np.float32), "reward": np.zeros(t, np.float32),
              "terminated": np.array([0, 0, 0, 0, 0, 1], bool), "truncated": np.zeros(t, bool),
              "is_success": np.zeros(t, bool)}
    replay = MixedReplay(ReplayBuffer(64, 2, 1, seed=0), ReplayBuffer(64, 2, 1, seed=1), batch_size=4, ratio=0.5,
                         offline_grows=True)
    replay.add_episode(arrays, np.array([0, 0, 1, 1, 0, 0], bool))
    assert len(replay.online) == 6 and len(replay.offline) == 2
    demo = replay.offline.gather(np.flatnonzero(replay.offline.valid))
    assert sorted(demo["action"][:, 0].tolist()) == [2.0, 3.0]
    assert sorted(demo["next_state"][:, 0].tolist()) == [3.0, 4.0]  # the next obs of each intervened step
    replay.add_demo(arrays)  # a recorded demo: demo buffer only
    assert len(replay.online) == 6 and len(replay.offline) == 8


def test_mixed_replay_is_ready_when_each_buffer_can_give_its_share():
    from vlarl.data.mixing import MixedReplay
    from vlarl.data.replay import ReplayBuffer

    def filled(n: int, value: float, seed: int) -> ReplayBuffer:
        buf = ReplayBuffer(64, 1, 1, seed=seed)
        buf.start_episode({"state": np.array([value], np.float32)})
        for i in range(n):
            buf.add(np.zeros(1, np.float32), 0.0, {"state": np.array([value], np.float32)}, False, truncated=i == n - 1)
        return buf

    online, demos = filled(3, 0.0, 0), filled(1, 1.0, 1)
    replay = MixedReplay(online, demos, batch_size=8, ratio=0.5, offline_grows=True)
    assert replay.offline_rows == 0 and not replay.ready()  # the demos cannot give 4 rows yet: 8 online needed
    replay.add_demo({"observation.state": np.ones((5, 1), np.float32), "action": np.zeros((4, 1), np.float32),
                     "reward": np.zeros(4, np.float32), "terminated": np.zeros(4, bool)})
    assert replay.offline_rows == 4 and not replay.ready()  # 3 online rows of the 4 needed
    online.start_episode({"state": np.zeros(1, np.float32)})
    online.add(np.zeros(1, np.float32), 0.0, {"state": np.zeros(1, np.float32)}, True)
    assert replay.ready()
    batch = replay.sample(3)
    assert batch["state"].shape == (3, 8, 1) and batch["offline"].sum(axis=1).tolist() == [4, 4, 4]
    assert (batch["state"][batch["offline"]] == 1.0).all() and (batch["state"][~batch["offline"]] == 0.0).all()


def test_simulated_human_takes_over_when_off_track_and_its_budget_decays(close_after):
    env = make("toy/reach")
    close_after(env)
    cfg = SimulatedHumanConfig(min_cosine=0.0, patience=3, takeover_steps=4, budget=6, min_budget=0,
                               decay_steps=100, noise=0.0)
    human = SimulatedHuman(expert_of(env), cfg, seed=0)
    wrapped = InterventionWrapper(env, human)
    wrapped.reset(seed=0)
    flags = []
    for _ in range(12):
        bad = -env.expert_action()  # the policy heads the wrong way
        _, _, term, trunc, info = wrapped.step(bad)
        flags.append(info["intervened"])
        if info["intervened"]:
            # what was executed (and will be stored) is the expert's action, not the policy's
            assert not np.allclose(info["intervention_action"], bad)
    # patience 3, then 4 expert steps, then 3 off-track steps again, then the budget (6) runs out
    assert flags == [False, False, True, True, True, True, False, False, True, True, False, False], flags
    human.set_progress(100)  # trained: no budget left
    wrapped.reset(seed=1)
    assert not any(wrapped.step(-env.expert_action())[4]["intervened"] for _ in range(10))
    human.set_progress(50)
    assert human.budget == 3


def test_simulated_human_leaves_a_good_policy_alone(close_after):
    env = make("toy/reach", episode_length=30)
    close_after(env)
    wrapped = InterventionWrapper(env, SimulatedHuman(expert_of(env), SimulatedHumanConfig(noise=0.0)))
    wrapped.reset(seed=3)
    done, flags = False, []
    while not done:
        _, _, term, trunc, info = wrapped.step(env.expert_action())
        flags.append(info["intervened"])
        done = term or trunc
    assert not any(flags) and info["is_success"]


def test_relative_frame_on_panda(close_after):
    from vlarl.envs.wrappers import RelativeFrame

    env = RelativeFrame(make("panda/pick-cube", obs_mode="state"))
    close_after(env)
    obs, _ = env.reset(seed=0)
    base = env.unwrapped
    p0, r0 = base.ee_pose()
    np.testing.assert_allclose(obs["state"][15:18], 0.0, atol=1e-6)  # the tcp starts at the origin
    np.testing.assert_allclose(obs["state"][18:21], r0.T @ (base._block() - p0), atol=1e-5)
    # +z in the end-effector frame: the gripper points down, so the hand moves down in the world
    for _ in range(5):
        obs, *_ = env.step(np.array([0.0, 0.0, 1.0, -1.0], np.float32))
    assert base._tcp()[2] < p0[2] - 0.02 and obs["state"][17] > 0.02
    a = np.array([0.3, -0.2, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(env.from_world(env.to_world(a)), a, atol=1e-6)
    with pytest.raises(VlarlError, match="ee_pose"):
        RelativeFrame(make("toy/reach"))


def test_classifier_reward_replaces_success_and_keeps_the_truth(close_after):
    from vlarl.envs.wrappers import ClassifierReward

    calls = []
    probs = [0.1, 0.9, 0.2, 0.8, 0.95]  # one stray positive frame, then two in a row

    def prob(images):
        calls.append(images["top"].shape)
        return probs[len(calls) - 1]

    env = ClassifierReward(make("toy/reach", obs_mode="state", terminate_on_success=False), prob, confirm_steps=2)
    close_after(env)
    env.reset(seed=0)
    rewards, dones = [], []
    for _ in range(5):
        _, r, term, trunc, info = env.step(np.zeros(2, np.float32))
        rewards.append(r)
        dones.append(term)
    assert rewards == [0.0, 0.0, 0.0, 0.0, 1.0] and dones == [False] * 4 + [True]
    assert info["is_success"] and not info["true_success"]  # the agent never moved: the truth is kept
    assert calls[0] == (32, 32, 3)  # state obs: the wrapper rendered the camera itself


def test_requested_device_that_is_unavailable_fails_before_the_run(monkeypatch, tmp_path):
    from vlarl.recipes.hil_serl import HILSERLConfig, train_hil_serl
    from vlarl.runtime.intervention import GamepadDevice, KeyboardDevice

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(VlarlError, match="keyboard is unavailable: no display"):
        KeyboardDevice()
    with pytest.raises(VlarlError, match="gamepad is unavailable"):
        GamepadDevice()
    cfg = HILSERLConfig(env=EnvConfig(name="toy/reach", obs_mode="state"), human="keyboard",
                        relative_frame=False, run_dir=str(tmp_path / "run"))
    with pytest.raises(VlarlError, match="keyboard is unavailable"):
        train_hil_serl(cfg, progress=False)
    assert not (tmp_path / "run" / "actors").exists()  # no actor was started
    with pytest.raises(VlarlError, match="runtime must be one of"):
        train_hil_serl(HILSERLConfig(runtime="threads", run_dir=str(tmp_path / "r2")), progress=False)


def test_reward_classifier_trains_and_reports_held_out_precision_recall(tmp_path):
    from vlarl.recipes.collect import CollectConfig, collect
    from vlarl.recipes.reward_classifier import (RewardClassifierConfig, load_reward_classifier,
                                                 train_reward_classifier)

    env = EnvConfig(name="toy/reach", obs_mode="pixels", image_size=64, options={"terminate_on_success": False})
    collect(CollectConfig(env=env, episodes=20, noise=0.6, out=str(tmp_path / "data")), progress=False)
    cfg = RewardClassifierConfig(data=[str(tmp_path / "data")], steps=500, holdout=0.25,
                                 run_dir=str(tmp_path / "clf"))
    results = train_reward_classifier(cfg, progress=False)
    assert results["test_episodes"] == 5 and results["train_positives"] > 20
    test = results["test"]
    base_rate = test["positives"] / test["frames"]  # the precision of always saying "success"
    # toy successes flicker at the goal's edge, so a few frames are ambiguous
    assert test["precision"] > max(0.75, base_rate + 0.15) and test["recall"] > 0.75, test
    model = load_reward_classifier(tmp_path / "clf")
    from vlarl.data import EpisodeDataset

    ep = EpisodeDataset(tmp_path / "data").load(0)
    probs = [model.success_prob({"top": img}) for img in ep["observation.images.top"]]
    labels = np.concatenate([[False], ep["is_success"]])
    assert np.mean((np.array(probs) >= 0.5) == labels) > 0.75
    from vlarl.envs import make
    from vlarl.recipes.reward_classifier import check_fits

    for size, fits in ((64, True), (84, False)):  # a classifier only judges the images it was trained on
        probe = make("toy/reach", obs_mode="pixels", image_size=size)
        if fits:
            check_fits(model, probe, "hil-serl")
        else:
            with pytest.raises(VlarlError, match=r"trained on cameras \['top'\] at 64 px"):
                check_fits(model, probe, "hil-serl")
        probe.close()
    with pytest.raises(VlarlError, match="no images"):
        collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="state"), episodes=1,
                              out=str(tmp_path / "s")), progress=False)
        train_reward_classifier(RewardClassifierConfig(data=[str(tmp_path / "s")], run_dir=str(tmp_path / "c2")),
                                progress=False)


def _toy_cfg(tmp_path, **kw):
    from vlarl.recipes.hil_serl import HILSERLConfig, _default_sac

    sac = _default_sac()  # HIL-SERL's settings, smaller networks
    sac.gripper_critic, sac.hidden, sac.batch_size = False, 64, 64  # the reach task has no gripper
    base = dict(env=EnvConfig(name="toy/reach", obs_mode="state"), relative_frame=False, demos=2, sac=sac,
                sim_human=SimulatedHumanConfig(budget=10, decay_steps=800), eval_every=0,
                final_eval_episodes=20, save_every=500, run_dir=str(tmp_path / "run"))
    base.update(kw)
    return HILSERLConfig(**base)


@pytest.mark.slow
def test_hil_serl_in_process_learns_the_toy_task(tmp_path):
    from vlarl.algos.sac import SACAgent
    from vlarl.recipes.hil_serl import evaluate_policy, train_hil_serl

    cfg = _toy_cfg(tmp_path, runtime="inprocess", steps=1500)
    torch.manual_seed(0)
    before = evaluate_policy(cfg, SACAgent(cfg.sac, 4, 2), 20, 20_000)
    results = train_hil_serl(cfg, progress=False)
    assert results["env_steps"] >= 1500 and results["updates"] > 1000
    rates = [e["intervention_rate"] for e in results["episodes"]]
    assert np.mean(rates[:10]) > np.mean(rates[-10:])  # the human steps back as training goes on
    # untrained 0.00; 0.55 after 1500 steps on this seed (the deterministic in-process runtime)
    assert before["success"] < 0.1 and results["final_success"] >= before["success"] + 0.25, \
        (before, results["final_success"])
    assert (tmp_path / "run" / "hil_serl.png").exists()


def test_frozen_encoders_that_opt_in_encode_a_frame_once():
    from vlarl.models.encoders import SHARED_TOKENS, EfficientNetLite0Encoder

    policy, classifier, private = EfficientNetLite0Encoder(), EfficientNetLite0Encoder(), EfficientNetLite0Encoder()
    policy.shared_tokens = classifier.shared_tokens = True
    frame = torch.randint(0, 255, (1, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        misses = SHARED_TOKENS.misses
        a = classifier(frame)
        b = policy(frame.clone())  # same bytes, another tensor
        assert SHARED_TOKENS.misses == misses + 1
        torch.testing.assert_close(a, private(frame))
        other = frame.clone()
        other[0, 0, 0, 0] += 1
        policy(other)  # one changed pixel: encoded anew
        assert SHARED_TOKENS.misses == misses + 2 and b is a


def test_online_only_run_without_demos_or_human_trains(tmp_path):
    from vlarl.recipes.hil_serl import train_hil_serl

    cfg = _toy_cfg(tmp_path, runtime="inprocess", demos=0, human="none", steps=200, final_eval_episodes=2)
    cfg.sac.batch_size, cfg.sac.hidden = 32, 16
    results = train_hil_serl(cfg, progress=False)
    assert results["updates"] > 100 and results["intervention_rate"] == 0.0 and results["demo_success_rate"] is None


def test_collect_random_policy_gives_failures_for_classifier_negatives(tmp_path):
    from vlarl.data import EpisodeDataset
    from vlarl.recipes.collect import CollectConfig, collect

    out = collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="state"), policy="random", episodes=3,
                                source="policy", out=str(tmp_path / "d")), progress=False)
    data = EpisodeDataset(tmp_path / "d")
    actions = data.load(0)["action"]
    assert out["written"] == 3 and data.episodes[0].source == "policy"
    assert actions.std(0).min() > 0.3 and np.abs(actions).max() <= 1.0  # uniform in [-1, 1], not the expert
    with pytest.raises(VlarlError, match="valid: scripted, random"):
        collect(CollectConfig(policy="teleop", out=str(tmp_path / "e")), progress=False)
