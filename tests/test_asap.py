"""ASAP: the tracking env and its wrappers, exact open-loop replay, the asymmetric critic, the
delta action reward by hand, the closed-form gain delta, the baselines' fits, the learning
rules on a gain-only twin, and the recipe end to end."""

import json
import math

import numpy as np
import pytest
import torch

from vlarl.envs import TwinConfig, make
from vlarl.errors import VlarlError


def _record(twin, episodes=3, length=30, noise=0.1, seed=0):
    """Rollouts of the scripted reference follower (plus noise) on ``twin``: Recordings."""
    from vlarl.algos.asap import Recordings
    from vlarl.envs.wrappers import LastActionObs

    env = LastActionObs(make("arm/track", episode_length=length, max_joint_error=1e9, twin=twin))
    rng = np.random.default_rng(seed)
    qpos, qvel, actions = [], [], []
    for e in range(episodes):
        env.reset(seed=seed + e)
        data = env.unwrapped.mj_data
        qp, qv, ac = [data.qpos.copy()], [data.qvel.copy()], []
        for _ in range(length):
            a = np.clip(env.unwrapped.expert_action() + rng.normal(0, noise, 3), -1, 1).astype(np.float32)
            env.step(a)
            ac.append(a)
            qp.append(data.qpos.copy())
            qv.append(data.qvel.copy())
        qpos.append(qp)
        qvel.append(qv)
        actions.append(ac)
    env.close()
    return Recordings(np.array(qpos), np.array(qvel), np.array(actions, np.float32))


def _sim(length=30):
    return make("arm/track", episode_length=length, max_joint_error=1e9)


def test_arm_env_tracks_its_reference_and_fails_far_from_it(close_after):
    from vlarl.envs.arm import forward_kinematics

    env = make("arm/track")
    close_after(env)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (10,) and env.unwrapped.privileged_state().shape == (16,)
    q_ref = env.unwrapped.motion(np.arange(101))[0]
    assert np.ptp(q_ref, axis=0).min() > 0.3  # the reference moves every joint
    total, steps = 0.0, 0
    done = False
    while not done:  # following the reference's next pose keeps the episode alive
        obs, r, term, trunc, _ = env.step(env.unwrapped.expert_action())
        total, steps, done = total + r, steps + 1, term or trunc
    assert steps == 100 and not term
    priv = env.unwrapped.privileged_state()
    assert np.allclose(priv[12:14], forward_kinematics(env.unwrapped.mj_data.qpos))
    env.reset(seed=0)
    for _ in range(100):  # holding still leaves the moving reference behind: a failure
        _, r_still, term, trunc, _ = env.step(np.full(3, -1.0, np.float32))
        if term or trunc:
            break
    assert term and not trunc
    with pytest.raises(VlarlError, match="camera"):
        make("arm/track", cameras=("front",))


def test_last_action_reports_the_command_under_a_delayed_twin_and_delta_adds_to_it(close_after):
    from vlarl.envs.wrappers import DeltaAction, LastActionObs

    env = LastActionObs(make("arm/track", twin=TwinConfig(action_delay=1)))
    close_after(env)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (13,) and np.all(obs["state"][10:] == 0)
    a = np.array([0.1, -0.2, 0.3], np.float32)
    obs, *_ = env.step(a)
    assert np.allclose(obs["state"][10:], a)  # the command, though the delayed arm executed zeros
    assert np.allclose(env.unwrapped.last_action, 0)

    seen = []
    delta = lambda state, prev, action: (seen.append((state.copy(), prev.copy())), np.full(3, 0.05, np.float32))[1]
    env2 = LastActionObs(DeltaAction(make("arm/track"), delta))
    close_after(env2)
    first, _ = env2.reset(seed=0)
    env2.step(a)
    obs, *_ = env2.step(a)
    assert np.allclose(env2.unwrapped.last_action, a + 0.05)  # what the arm executed
    assert np.allclose(obs["state"][10:], a)  # the policy sees its own command, not a + delta
    assert np.array_equal(seen[0][0], first["state"][:10]) and np.all(seen[0][1] == 0) and np.allclose(seen[1][1], a)


def test_open_loop_replay_reproduces_recorded_states_exactly_when_twin_is_sim():
    from vlarl.algos.asap import OpenLoopReplay, replay_errors

    rec = _record(TwinConfig(), episodes=2)
    sim = _sim()
    errors = replay_errors(sim, rec, horizon=30)
    assert errors == {"joint_pos_error": 0.0, "joint_vel_error": 0.0, "ee_pos_error": 0.0}
    assert replay_errors(sim, rec, horizon=7)["joint_pos_error"] == 0.0  # restarted mid-recording too
    env = OpenLoopReplay(sim, rec, horizon=10)
    env.reset(seed=1)
    e, t0 = env._e, env._t
    for t in range(t0, t0 + 10):
        _, _, _, trunc, info = env.step(np.zeros(3, np.float32))
        assert np.array_equal(sim.unwrapped.mj_data.qpos, rec.qpos[e, t + 1]) and info["q_error"] == 0.0
    assert trunc
    # a delayed twin replays exactly too, its queue refilled with the commands in flight
    delayed = TwinConfig(actuator_gain=0.8, action_delay=2)
    rec_d = _record(delayed, episodes=1)
    twin_sim = make("arm/track", episode_length=30, max_joint_error=1e9, twin=delayed)
    assert replay_errors(twin_sim, rec_d, horizon=6)["joint_pos_error"] == 0.0
    assert replay_errors(sim, rec_d, horizon=6)["joint_pos_error"] > 1e-3
    for s in (sim, twin_sim):
        s.close()


def test_delta_reward_matches_a_hand_computation():
    from vlarl.algos.asap import OpenLoopReplay

    rec = _record(TwinConfig(actuator_gain=0.65), episodes=1)
    sim = _sim()
    env = OpenLoopReplay(sim, rec, horizon=5, action_penalty=0.1, sigma_q=0.01, sigma_qd=1.0)
    obs, _ = env.reset(seed=0)
    e, t = env._e, env._t
    assert np.allclose(obs["state"][9:], rec.actions[e, t]) and np.allclose(obs["state"][:6], np.r_[rec.qpos[e, t], rec.qvel[e, t]])
    assert np.allclose(env.privileged_state()[6:9], rec.qpos[e, t + 1])  # the critic sees the real next state
    delta = np.array([0.2, -0.1, 0.05], np.float32)
    _, reward, *_ = env.step(delta)
    q, qd = sim.unwrapped.mj_data.qpos, sim.unwrapped.mj_data.qvel
    by_hand = (math.exp(-np.sum((q - rec.qpos[e, t + 1]) ** 2) / 0.01) + 0.5 * math.exp(-np.sum((qd - rec.qvel[e, t + 1]) ** 2))
               - 0.1 * math.sqrt(0.2 ** 2 + 0.1 ** 2 + 0.05 ** 2))
    assert reward == pytest.approx(by_hand, rel=1e-6)
    sim.close()


def test_asymmetric_critic_sees_privileged_inputs_and_the_actor_does_not():
    from vlarl.algos.asymmetric_ppo import AsymmetricActorCritic

    torch.manual_seed(0)
    model = AsymmetricActorCritic(13, 16, 3, hidden=32)
    for p in model.actor[-1].parameters():  # not the near-zero init: outputs must differ by input
        torch.nn.init.normal_(p)
    obs = torch.randn(5, 13)
    priv_a, priv_b = torch.randn(5, 16), torch.randn(5, 16)
    assert not torch.allclose(model.value(obs, priv_a), model.value(obs, priv_b))
    priv = priv_a.clone().requires_grad_(True)
    model.value(obs, priv).sum().backward()
    assert priv.grad.abs().sum() > 0  # the critic's value depends on the privileged state
    assert model.actor[0].in_features == 13  # the actor's only input is the observation
    o = obs.clone().requires_grad_(True)
    model.dist(o).mean.sum().backward()
    assert o.grad.abs().sum() > 0
    # the policy env gives the actor proprio, phase and its last command; the reference is privileged
    from vlarl.recipes.asap import ASAPConfig, policy_env

    env = policy_env(ASAPConfig())
    obs_np, _ = env.reset(seed=0)
    base = env.unwrapped
    assert np.allclose(obs_np["state"][:6], np.r_[base.mj_data.qpos, base.mj_data.qvel])
    assert np.allclose(base.privileged_state()[:3], base.motion(0)[0])
    env.close()


def test_closed_form_gain_delta_makes_the_sim_step_like_the_twin():
    from vlarl.algos.asap import ideal_gain_delta, start_replay

    rec = _record(TwinConfig(actuator_gain=0.65), episodes=2)
    sim = _sim()
    err_ideal, err_zero = [], []
    for e in range(rec.episodes):
        for t in range(rec.length):
            a = rec.actions[e, t]
            for delta, out in ((np.zeros(3), err_zero), (None, err_ideal)):
                state = start_replay(sim, rec, e, t)
                d = ideal_gain_delta(state, a, 0.65) if delta is None else delta
                sim.step((a + d).astype(np.float32))
                out.append(np.abs(sim.unwrapped.mj_data.qpos - rec.qpos[e, t + 1]).max())
    sim.close()
    # exact at the step's start; the physics substeps within it leave a small remainder
    assert np.mean(err_ideal) < 0.1 * np.mean(err_zero)


def test_sysid_recovers_a_gain_and_residual_dynamics_fit_the_recordings():
    from vlarl.algos.asap import fit_residual_dynamics, replay_errors, residual_dataset, sysid_search

    rec = _record(TwinConfig(actuator_gain=0.65), episodes=2)
    fit = sysid_search(lambda twin: make("arm/track", episode_length=30, max_joint_error=1e9, twin=twin), rec,
                       horizon=10, params=("actuator_gain",), iterations=5, population=10, elite=3)
    assert fit["twin"]["actuator_gain"] == pytest.approx(0.65, abs=0.03) and fit["twin"]["action_delay"] == 0
    assert fit["replay_error"] < 0.01
    with pytest.raises(VlarlError, match="sysid.params"):
        sysid_search(lambda twin: None, rec, 10, ("stiffness",))

    sim = _sim()
    x, y = residual_dataset(sim, rec)
    assert x.shape == (60, 12) and y.shape == (60, 6) and np.abs(y).max() > 1e-3
    model, info = fit_residual_dynamics(x, y, steps=800, hidden=64)
    assert info["train_loss"] < 0.2 * info["zero_residual_loss"]
    before = replay_errors(sim, rec, 10)["joint_pos_error"]
    sim.unwrapped.dynamics_residual = model.predict
    assert replay_errors(sim, rec, 10)["joint_pos_error"] < 0.5 * before
    sim.close()


@pytest.mark.timeout(600)
def test_delta_action_model_learns_to_close_the_gap_of_a_weak_actuator():
    """PPO on open-loop replays: the learned delta cuts the replay error of a gain-0.65 twin and
    points the way the closed form does."""
    from vlarl.algos.asap import DELTA_OBS_DIM, OpenLoopReplay, delta_obs, ideal_gain_delta, replay_errors, start_replay
    from vlarl.algos.asymmetric_ppo import AsymmetricActorCritic, OnPolicyConfig, train_ppo
    from vlarl.algos.ppo import PPOConfig

    torch.manual_seed(0)
    rec = _record(TwinConfig(actuator_gain=0.65), episodes=4, noise=0.2)
    model = AsymmetricActorCritic(DELTA_OBS_DIM, 12, 3, hidden=64, init_log_std=-2.0)
    cfg = OnPolicyConfig(steps=24_576, envs=8, rollout=64,
                         ppo=PPOConfig(lr=1e-3, epochs=5, minibatch_size=256, gamma=0.9, target_kl=0.05))
    envs = [OpenLoopReplay(_sim(), rec, horizon=10) for _ in range(8)]
    train_ppo(model, envs, cfg, seed=0)
    delta = lambda s, p, a: model.act(delta_obs(s, p, a))
    sim = _sim()
    before = replay_errors(sim, rec, 10)["joint_pos_error"]
    after = replay_errors(sim, rec, 10, delta)["joint_pos_error"]
    learned, ideal = [], []
    for t in range(0, 30, 3):
        state = start_replay(sim, rec, 0, t)
        learned.append(delta(state, rec.prev_action(0, t), rec.actions[0, t]))
        ideal.append(ideal_gain_delta(state, rec.actions[0, t], 0.65))
    for env in envs + [sim]:
        env.close()
    assert after < 0.6 * before, (before, after)
    assert np.corrcoef(np.ravel(learned), np.ravel(ideal))[0, 1] > 0.5


@pytest.mark.timeout(600)
def test_asymmetric_ppo_learns_to_track():
    from vlarl.algos.asymmetric_ppo import train_ppo
    from vlarl.recipes.asap import ASAPConfig, new_policy, policy_env, tracking_errors

    torch.manual_seed(0)
    cfg = ASAPConfig(env={"episode_length": 50})
    policy = new_policy(cfg, -1.0)
    env = policy_env(cfg, max_joint_error=1e9)
    before = tracking_errors(policy, env, 2, seed=7)["ee_pos_error"]
    envs = [policy_env(cfg) for _ in range(8)]
    cfg.pretrain.steps, cfg.pretrain.envs = 40_960, 8
    out = train_ppo(policy, envs, cfg.pretrain, seed=0)
    after = tracking_errors(policy, env, 2, seed=7)["ee_pos_error"]
    for e in envs + [env]:
        e.close()
    assert out["env_steps"] >= 40_960 and after < 0.6 * before, (before, after)


def _tiny(tmp_path, **kw):
    from vlarl.algos.asymmetric_ppo import OnPolicyConfig
    from vlarl.recipes.asap import ASAPConfig, DeltaConfig, DynamicsConfig, SysIDConfig

    small = lambda steps: OnPolicyConfig(steps=steps, envs=2, rollout=32, hidden=16, save_every=1)
    base = dict(env={"episode_length": 20}, pretrain=small(256), collect_episodes=3, holdout_episodes=1,
                delta=DeltaConfig(train=small(128), horizon=5), sysid=SysIDConfig(iterations=1, population=3, elite=1),
                dynamics=DynamicsConfig(steps=20, hidden=16), finetune=small(128), eval_episodes=1,
                run_dir=str(tmp_path / "asap"))
    return ASAPConfig(**{**base, **kw})


def test_asap_recipe_end_to_end_resumes_and_runs_stages_alone(tmp_path):
    from vlarl.recipes.asap import VARIANTS, train_asap

    with pytest.raises(VlarlError, match="collect"):  # a stage alone needs its inputs
        train_asap(_tiny(tmp_path, stage="delta"), progress=False)
    cfg = _tiny(tmp_path)
    out = train_asap(cfg, progress=False)
    assert set(out["closed_loop_pos_error"]) == set(VARIANTS)
    assert set(out["open_loop_replay"]) == {"nominal", "sysid", "delta_dynamics", "asap"}
    assert all(v > 0 for v in out["closed_loop_pos_error"].values())
    root = tmp_path / "asap"
    assert json.loads((root / "results.json").read_text())["closed_loop_pos_error"] == out["closed_loop_pos_error"]
    assert "| asap |" in (root / "results.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")}
    again = train_asap(_tiny(tmp_path), progress=False)  # every stage finished: nothing is retrained
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")} == stamps
    assert again["closed_loop_pos_error"] == out["closed_loop_pos_error"]
    # one stage alone, on the run's own inputs
    alone = train_asap(_tiny(tmp_path, stage="evaluate"), progress=False)
    assert alone["closed_loop_pos_error"] == out["closed_loop_pos_error"]


def test_asap_config_errors_are_named(tmp_path):
    from vlarl.recipes.asap import train_asap

    for kw, match in (({"stage": "align"}, "stage"), ({"variants": ["vanilla", "oracle"]}, "variants"),
                      ({"twin": {"gain": 0.5}}, "twin"), ({"env": {"colour": 1}}, "colour"),
                      ({"holdout_episodes": 3}, "holdout_episodes")):
        with pytest.raises(VlarlError, match=match):
            train_asap(_tiny(tmp_path, **kw), progress=False)
    assert not (tmp_path / "asap").exists()


def test_a_ppo_stage_resumes_from_its_checkpoint_and_skips_when_finished(tmp_path):
    from dataclasses import replace

    from vlarl.algos.asymmetric_ppo import OnPolicyConfig
    from vlarl.recipes.asap import ASAPConfig, new_policy, policy_env, ppo_stage

    asap = ASAPConfig(env={"episode_length": 20})
    make_envs = lambda: [policy_env(asap) for _ in range(2)]
    cfg = OnPolicyConfig(steps=128, envs=2, rollout=32, hidden=16, save_every=1)
    asap.pretrain.hidden = 16
    out = ppo_stage(tmp_path / "p", new_policy(asap, -1.0), make_envs, cfg, seed=0, progress=False)
    assert (out["env_steps"], out["updates"]) == (128, 2)
    (tmp_path / "p" / "results.json").unlink()  # as if stopped before finishing a longer run,
    with open(tmp_path / "p" / "metrics.jsonl", "a") as f:  # after logging past its last checkpoint
        f.write(json.dumps({"step": 160, "time": 0.0}) + "\n")
    policy = new_policy(asap, -1.0)
    out = ppo_stage(tmp_path / "p", policy, make_envs, replace(cfg, steps=256), seed=0, progress=False)
    assert (out["env_steps"], out["updates"]) == (256, 4)  # continued from update 2, not restarted
    steps = [json.loads(line)["step"] for line in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [64, 128, 192, 256]
    again = new_policy(asap, -1.0)
    assert ppo_stage(tmp_path / "p", again, make_envs, replace(cfg, steps=256), seed=0, progress=False) == out
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), policy.state_dict().values()))
