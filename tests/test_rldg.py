"""RLDG: specs of the comparisons, the pixel recorder, success filtering with its sources, the
specialists' loading, and the recipe end to end on the toy env."""

import json

import numpy as np
import pytest
import torch

from vlarl.errors import VlarlError
from vlarl.recipes.collect import EnvConfig


def test_generalist_specs_and_how_a_mix_splits_its_episodes():
    from vlarl.recipes.rldg import episodes_per_source, generalist_datasets, parse_generalist

    assert parse_generalist("rl:45") == ("rl", 45) and parse_generalist("demos:300") == ("demos", 300)
    for bad in ("rl", "rl:0", "human:5", "mix:x", "rl:-3"):
        with pytest.raises(VlarlError, match="generalists"):
            parse_generalist(bad)
    # a mix of 5 takes 3 RL and 2 demo episodes per task; each source serves the largest ask
    assert episodes_per_source(["rl:4", "mix:5", "demos:1"]) == {"rl": 4, "demos": 2}
    assert episodes_per_source(["mix:7"]) == {"rl": 4, "demos": 3}
    assert episodes_per_source(["demos:300", "rl:45"]) == {"rl": 45, "demos": 300}
    rl, demos = ["rl/a", "rl/b"], ["d/a", "d/b"]
    assert generalist_datasets("rl", 3, rl, demos) == (rl, [3, 3])
    assert generalist_datasets("demos", 3, rl, demos) == (demos, [3, 3])
    assert generalist_datasets("mix", 5, rl, demos) == (rl + demos, [3, 3, 2, 2])


def test_pixels_recorder_records_what_a_pixels_env_shows(close_after):
    from vlarl.envs import make
    from vlarl.envs.wrappers import PixelsRecorder

    state_env = PixelsRecorder(make("toy/reach", obs_mode="state", image_size=16))
    pixel_env = make("toy/reach", obs_mode="pixels", image_size=16)
    close_after(state_env)
    close_after(pixel_env)
    obs, _ = state_env.reset(seed=3)
    assert obs["state"].shape == (4,) and "pixels" not in obs  # the policy still sees state
    p_obs, _ = pixel_env.reset(seed=3)
    states, images = [p_obs["state"]], [p_obs["pixels"]["top"]]
    actions = [np.array([2.0, -0.5], np.float32), np.array([0.3, 0.9], np.float32)]
    for a in actions:
        state_env.step(a)
        p_obs, *_ = pixel_env.step(a)
        states.append(p_obs["state"])
        images.append(p_obs["pixels"]["top"])
    ep = state_env.episode()
    np.testing.assert_array_equal(ep["observation.state"], np.stack(states))
    np.testing.assert_array_equal(ep["observation.images.top"], np.stack(images))
    np.testing.assert_array_equal(ep["action"], np.clip(np.stack(actions), -1, 1))  # what the env executed


def _toy_data_env():
    return EnvConfig(name="", obs_mode="pixels", image_size=16, episode_length=20)


def test_keep_successes_keeps_only_successful_episodes_and_records_their_source(tmp_path, close_after):
    from vlarl.data import EpisodeDataset
    from vlarl.envs import ScriptedExpert, make
    from vlarl.envs.wrappers import PixelsRecorder
    from vlarl.recipes.rldg import keep_successes

    env = PixelsRecorder(make("toy/reach", obs_mode="state", image_size=16))
    close_after(env)
    expert, current = ScriptedExpert(env), {}

    def act(obs):  # succeeds from start states whose seed is a multiple of 3, stands still elsewhere
        return expert() if current["seed"] % 3 == 0 else np.zeros(2, np.float32)

    def reseed(seed):
        current["seed"] = seed

    out = tmp_path / "rl"
    meta = {"specialist": "runs/x", "env": "toy/reach"}
    r = keep_successes(env, act, out, 3, 50, 100, "policy", meta, progress=False, reseed=reseed)
    data = EpisodeDataset(out)
    seeds = [m.extra["seed"] for m in data.episodes]
    assert seeds == [102, 105, 108]  # seeds 100..108 tried; only the expert's starts kept
    assert r == {"episodes": 3, "attempts": 9, "success_rate": pytest.approx(3 / 9),
                 "mean_length": pytest.approx(np.mean([m.length for m in data.episodes]))}
    for i, m in enumerate(data.episodes):
        assert m.success and m.source == "policy" and m.extra["specialist"] == "runs/x"
        ep = data.load(i)
        assert ep["is_success"][-1] and ep["observation.state"].shape[1] == 2  # proprio, as in pixels mode
        assert ep["observation.images.top"].shape[1:] == (16, 16, 3)
    # A larger ask continues after the last attempt (no start state twice); max_attempts bounds it.
    r = keep_successes(env, act, out, 10, 14, 100, "policy", meta, progress=False, reseed=reseed)
    assert [m.extra["seed"] for m in EpisodeDataset(out).episodes] == [102, 105, 108, 111]
    assert r["episodes"] == 4 and r["attempts"] == 14
    with pytest.raises(VlarlError, match="PixelsRecorder"):
        keep_successes(make("toy/reach"), act, tmp_path / "x", 1, 1, 0, "policy", meta, progress=False)


def test_config_errors_are_named_before_a_run_directory_exists(tmp_path):
    from vlarl.recipes.rldg import RLDGConfig, train_rldg

    cases = [
        (dict(specialist="ppo"), "specialist"),
        (dict(generalists=["rl:5", "humans:5"]), "generalists"),
        (dict(generalists=[]), "generalists"),
        (dict(tasks=["toy/rech"]), "toy/rech"),
        (dict(specialist_runs={"panda/pick-cube": str(tmp_path)}), "not one of tasks"),
        (dict(specialist_runs={"toy/reach": str(tmp_path / "none")}), "specialist_runs.toy/reach"),
        (dict(data_env=EnvConfig(name="", obs_mode="state")), "data_env.obs_mode"),
    ]
    for i, (kw, match) in enumerate(cases):
        run_dir = tmp_path / f"run{i}"
        with pytest.raises(VlarlError, match=match):
            train_rldg(RLDGConfig(run_dir=str(run_dir), **kw), progress=False)
        assert not run_dir.exists()


def test_hil_serl_specialist_acts_deterministically_through_its_env_stack(tmp_path):
    from vlarl.algos.sac import SACAgent
    from vlarl.envs.wrappers import PixelsRecorder
    from vlarl.recipes.hil_serl import HILSERLConfig, _default_sac, train_hil_serl
    from vlarl.recipes.rldg import load_specialist
    from vlarl.runtime import latest_checkpoint, load_checkpoint

    sac = _default_sac()
    sac.gripper_critic, sac.hidden, sac.batch_size = False, 16, 32
    cfg = HILSERLConfig(env=EnvConfig(name="toy/reach", obs_mode="state", episode_length=12), sac=sac,
                        relative_frame=False, runtime="inprocess", human="none", demos=0, steps=100, eval_every=0,
                        final_eval_episodes=1, video=False, save_every=100, run_dir=str(tmp_path / "spec"))
    train_hil_serl(cfg, progress=False)
    spec = load_specialist(tmp_path / "spec", "hil-serl", _toy_data_env())
    agent = SACAgent(sac, 4, 2)
    load_checkpoint(latest_checkpoint(tmp_path / "spec" / "checkpoints"), {"agent": agent}, restore_rng=False)
    env = spec.make_env(0)
    try:
        assert isinstance(env, PixelsRecorder)  # no wrappers without a human or a relative frame
        obs, _ = env.reset(seed=1)
        with torch.no_grad():
            want = agent.act({"state": torch.as_tensor(obs["state"])[None]}, deterministic=True)[0].numpy()
        np.testing.assert_allclose(spec.act(obs), want, atol=1e-6)
        env.step(spec.act(obs))
        assert env.episode()["observation.images.top"].shape == (2, 16, 16, 3)
        # the data env's episode length (not the specialist's 12), ended at success
        assert env.unwrapped.episode_length == 20 and env.unwrapped.terminate_on_success
    finally:
        env.close()


def test_rldg_end_to_end_on_the_toy_env(tmp_path):
    from vlarl.algos.sac import SACConfig
    from vlarl.data import EpisodeDataset
    from vlarl.models.policy import PolicyConfig
    from vlarl.recipes.rldg import RLDGConfig, train_rldg
    from vlarl.recipes.rlpd import RLPDConfig
    from vlarl.recipes.sft import SFTConfig
    from vlarl.runtime import Run

    # a specialist that succeeds about half the time after 900 steps on this seed
    rlpd = RLPDConfig(env=EnvConfig(obs_mode="state"), sac=SACConfig(ensemble=2, utd=4, batch_size=64, hidden=64, lr=3e-3),
                      steps=900, random_steps=100, eval_every=0, save_every=900, save_buffer=False)
    cfg = RLDGConfig(tasks=["toy/reach"], rlpd=rlpd, specialist_demos=3, data_env=_toy_data_env(),
                     generalists=["rl:3", "demos:3", "mix:3"], attempts_per_episode=30,
                     sft=SFTConfig(policy=PolicyConfig(encoder="conv", dim=32, layers=1), steps=60, batch_size=32,
                                   save_every=60, log_every=20, video_episodes=0),
                     eval_episodes=4, eval_envs=1, run_dir=str(tmp_path / "rldg"))
    results = train_rldg(cfg, progress=False)
    root = tmp_path / "rldg"
    rl, demos = EpisodeDataset(root / "data" / "rl" / "toy_reach"), EpisodeDataset(root / "data" / "demos" / "toy_reach")
    assert len(rl.episodes) == 3 and len(demos.episodes) == 3
    assert all(m.success and m.source == "policy" for m in rl.episodes)
    assert all(m.extra["specialist"] == str(root / "specialists" / "toy_reach") for m in rl.episodes)
    assert all(m.success and m.source == "expert" for m in demos.episodes)
    assert results["data"]["toy/reach"]["rl"]["episodes"] == 3
    for key in ("rl_data", "demo_data", "mix_data"):
        row = results[key]["3"]
        assert 0.0 <= row["success"] <= 1.0 and 1 <= row["episode_length"] <= 20
    # each generalist trained on exactly its share: the mix holds 2 RL + 1 demo episodes
    frames = json.loads((root / "generalists" / "mix-3" / "results.json").read_text())["frames"]
    assert frames == sum(m.length for m in rl.episodes[:2]) + demos.episodes[0].length
    assert (root / "results.md").exists() and (root / "specialists" / "toy_reach" / "results.json").exists()
    # Resuming a finished run redoes nothing and gives the same figures.
    again = train_rldg(resume=Run.resume(root, RLDGConfig), progress=False)
    assert again["rl_data"] == results["rl_data"] and again["demo_data"] == results["demo_data"]


def test_recorder_under_an_end_effector_frame_records_world_actions(close_after):
    from vlarl.envs.wrappers import PixelsRecorder
    from vlarl.envs.wrappers import insert_innermost
    from vlarl.recipes.hil_serl import HILSERLConfig, make_env

    cfg = HILSERLConfig(env=EnvConfig(name="panda/pick-cube", obs_mode="state", image_size=32, episode_length=5),
                        human="none", relative_frame=True)
    env, _ = make_env(cfg, 0, training=False)
    env = insert_innermost(env, PixelsRecorder)
    close_after(env)
    obs, _ = env.reset(seed=4)
    assert obs["state"].shape == (21,)  # the specialist still sees proprio + cube, in its own frame
    action = np.array([0.5, -0.3, 0.2, 1.0], np.float32)
    env.step(action)
    ep = env.env.episode()
    np.testing.assert_allclose(ep["action"][0], np.clip(env.to_world(action), -1, 1), atol=1e-6)
    assert not np.allclose(env.to_world(action), action)  # the frame is not the identity here
    assert ep["observation.state"].shape == (2, 18)  # proprio only, as a pixels-mode panda shows it
    assert set(k for k in ep if k.startswith("observation.images.")) == {"observation.images.front",
                                                                           "observation.images.wrist"}
