"""ConRFT: the consistency parametrisation and schedule, Cal-QL's floor, beta, shaping, and a
tiny offline -> online run on the toy task."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from vlarl.algos.calql import CalQLConfig, calql_regulariser
from vlarl.algos.conrft import BetaSchedule, ConRFTAgent, ConRFTConfig, actor_loss
from vlarl.algos.consistency import (ConsistencyConfig, ConsistencyHead, consistency_bc_loss, karras_sigmas,
                                     karras_weight, scalings)
from vlarl.algos.sac import SACConfig
from vlarl.data.replay import ReplayBuffer
from vlarl.envs.wrappers import ShapedReward
from vlarl.errors import VlarlError


# --- consistency head ---------------------------------------------------------------------
def test_boundary_condition_holds_by_construction():
    cfg = ConsistencyConfig()
    c_skip, c_out, c_in = scalings(torch.tensor([cfg.sigma_min]), cfg)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    assert c_in.item() == pytest.approx(1 / math.sqrt(0.5 ** 2 + 0.002 ** 2))
    # f(x, eps) = x whatever the network is
    torch.manual_seed(0)
    head = ConsistencyHead(5, 3, ConsistencyConfig(clip=False))
    x = torch.randn(4, 3) * 3
    out = head.denoise(torch.randn(4, 5), x, torch.full((4,), cfg.sigma_min))
    assert torch.equal(out, x)
    # and away from the boundary the skip connection fades: c_skip(K) is tiny, c_out ~ sigma_data
    c_skip, c_out, _ = scalings(torch.tensor([80.0]), cfg)
    assert c_skip.item() == pytest.approx(0.25 / (79.998 ** 2 + 0.25))
    assert c_out.item() == pytest.approx(79.998 * 0.5 / math.sqrt(0.25 + 6400), rel=1e-6)


def test_karras_schedule_values():
    cfg = ConsistencyConfig()
    t = karras_sigmas(cfg)
    assert len(t) == 40
    assert t[0].item() == pytest.approx(80.0, rel=1e-6) and t[-1].item() == pytest.approx(0.002, rel=1e-5)
    assert bool((t[1:] < t[:-1]).all())
    hi, lo = 80 ** (1 / 7), 0.002 ** (1 / 7)
    assert t[1].item() == pytest.approx((hi + (lo - hi) / 39) ** 7, rel=1e-5)
    assert t[20].item() == pytest.approx((hi + 20 / 39 * (lo - hi)) ** 7, rel=1e-5)
    assert karras_weight(torch.tensor(2.0), cfg).item() == pytest.approx(1 / 4 + 4)


def test_consistency_bc_learns_a_state_dependent_action():
    """One-step samples (any noise) end near the demonstrated action after BC alone."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    head = ConsistencyHead(2, 2, ConsistencyConfig(hidden=64))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    s = torch.rand(256, 2) * 2 - 1
    a = torch.stack([0.8 * s[:, 0], -0.6 * s[:, 1]], dim=1)  # the "expert"
    before = ((head(s) - a) ** 2).sum(-1).mean().item()
    for _ in range(400):
        loss, _ = consistency_bc_loss(head, s, a, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = ((head(s) - a) ** 2).sum(-1).mean().item()
        mode = ((head.mode(s) - a) ** 2).sum(-1).mean().item()
    assert after < 0.02 < before and mode < 0.02


# --- Cal-QL -------------------------------------------------------------------------------
def test_calql_floor_on_a_hand_batch():
    q_data = torch.tensor([[1.0, 2.0]])  # E = 1 critic, B = 2 states
    q_random = torch.tensor([[[0.0], [0.5]]])  # one random action per state
    q_policy = torch.tensor([[[-1.0, 3.0], [1.0, 0.0]]])  # two policy actions per state
    mc = torch.tensor([0.5, 4.0])
    cfg = CalQLConfig(temperature=1.0)
    diff, info = calql_regulariser(q_data, q_random, q_policy, mc, cfg)
    # state 0: policy values floored to (0.5, 3.0); state 1: to (4.0, 4.0)
    r0 = math.log((math.exp(0.0) + math.exp(0.5) + math.exp(3.0) + math.exp(1.0)) / 4) - 1.0
    r1 = math.log((math.exp(0.5) + math.exp(4.0) + math.exp(4.0) + math.exp(2.0)) / 4) - 2.0
    assert diff[0, 0].item() == pytest.approx(r0, rel=1e-6)
    assert diff[0, 1].item() == pytest.approx(r1, rel=1e-6)
    assert info["calql_bound_rate"].item() == pytest.approx(3 / 4)
    # without the floor it is plain CQL: smaller, as the floor only raises pushed-down values
    plain, _ = calql_regulariser(q_data, q_random, q_policy, mc, CalQLConfig(floor=False))
    c0 = math.log((math.exp(0.0) + math.exp(-1.0) + math.exp(3.0) + math.exp(1.0)) / 4) - 1.0
    assert plain[0, 0].item() == pytest.approx(c0, rel=1e-6)
    assert bool((plain < diff).all())
    # the temperature scales the soft maximum: T log mean exp(q / T)
    t2, _ = calql_regulariser(q_data, q_random, q_policy, mc, CalQLConfig(temperature=2.0))
    r0_t2 = 2 * math.log((1 + math.exp(0.25) + math.exp(1.5) + math.exp(0.5)) / 4) - 1.0
    assert t2[0, 0].item() == pytest.approx(r0_t2, rel=1e-6)


def test_replay_keeps_monte_carlo_returns():
    buf = ReplayBuffer(5, 1, 1, mc_gamma=0.5)  # 3 steps + 4 frames, then a second episode wraps around
    obs = {"state": np.zeros(1, np.float32)}
    buf.start_episode(obs)
    for r, last in ((1.0, False), (0.0, False), (2.0, True)):
        buf.add(np.zeros(1), r, obs, terminated=last)
    np.testing.assert_allclose(buf.mc_return[:3], [1 + 0.5 * (0 + 0.5 * 2), 0.5 * 2, 2.0])
    buf.start_episode(obs)  # slot 4
    buf.add(np.zeros(1), 3.0, obs, terminated=False)  # slot 4 -> next frame wraps to slot 0
    buf.add(np.zeros(1), 1.0, obs, terminated=False, truncated=True)  # slot 0
    assert buf.mc_return[4] == pytest.approx(3 + 0.5 * 1) and buf.mc_return[0] == pytest.approx(1.0)
    assert "mc_return" in buf.sample(4)


# --- the actor loss and beta --------------------------------------------------------------
def test_beta_schedules():
    lin = BetaSchedule(start=0.5, end=0.1, steps=100, kind="linear")
    assert [lin(0), lin(50), lin(100), lin(1000)] == pytest.approx([0.5, 0.3, 0.1, 0.1])
    exp = BetaSchedule(start=1.0, end=0.01, steps=100, kind="exponential")
    assert [exp(0), exp(50), exp(100)] == pytest.approx([1.0, 0.1, 0.01])
    assert BetaSchedule(start=0.3, kind="constant")(10 ** 6) == 0.3
    with pytest.raises(VlarlError, match="kind"):
        BetaSchedule(kind="cosine")(0)


def test_bc_term_uses_only_demo_rows():
    torch.manual_seed(0)
    agent = ConRFTAgent(SACConfig(ensemble=2), ConRFTConfig(q_normalize=False), state_dim=3, action_dim=2)
    obs = {"state": torch.randn(6, 3)}
    batch = {"obs": obs, "action": torch.rand(6, 2) * 2 - 1, "offline": torch.tensor([0, 0, 0, 1, 1, 1]).bool()}
    # with eta = 0 the loss is beta x BC of the demo rows alone: changing the online rows' actions changes nothing
    torch.manual_seed(1)
    a, _ = actor_loss(agent, batch, eta=0.0, beta=1.0, generator=torch.Generator().manual_seed(0))
    other = {**batch, "action": torch.cat([torch.zeros(3, 2), batch["action"][3:]])}
    torch.manual_seed(1)
    b, _ = actor_loss(agent, other, eta=0.0, beta=1.0, generator=torch.Generator().manual_seed(0))
    assert a.item() == pytest.approx(b.item()) and a.item() > 0
    # no demo rows: only the Q term remains
    none = {**batch, "offline": torch.zeros(6, dtype=torch.bool)}
    loss, info = actor_loss(agent, none, eta=1.0, beta=1.0)
    assert "bc_loss" not in info and loss.item() == pytest.approx(-info["q_pi"].item())


# --- reward shaping -----------------------------------------------------------------------
class _GripperEnv(gym.Env):
    """Succeeds at step 5; has a gripper on action index 1."""

    gripper_action = 1
    observation_space = gym.spaces.Box(-1, 1, (1,))
    action_space = gym.spaces.Box(-1, 1, (2,))

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 0.0, self.t == 5, False, {"is_success": self.t == 5}


def test_shaped_reward_charges_steps_toggles_and_pays_success():
    env = ShapedReward(_GripperEnv(), success=10.0, step=-0.05, gripper_toggle=-0.2)
    env.reset()
    grips = [-1.0, 0.2, 1.0, 0.9, -0.7]  # open, dead band (keeps open), close (toggle), close, open (toggle)
    rewards = [env.step(np.array([0.0, g]))[1] for g in grips]
    assert rewards == pytest.approx([-0.05, -0.05, -0.25, -0.05, -0.25 + 10.0])
    env.reset()  # the first command after a reset is never a toggle
    assert env.step(np.array([0.0, 1.0]))[1] == pytest.approx(-0.05)


# --- the recipe ---------------------------------------------------------------------------
def _toy(run_dir, *extra: str):
    from vlarl.recipes.conrft import ConRFTRecipeConfig
    from vlarl.runtime import load_config

    return load_config(ConRFTRecipeConfig, None, [
        "env.name=toy/reach", "env.obs_mode=state", "env.episode_length=50", "runtime=inprocess",
        "relative_frame=false", "sac.batch_size=64", "sac.utd=1", "video=false", "save_every=100000",
        f"run_dir={run_dir}", *extra])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_offline_then_online_run_improves(tmp_path):
    """Weak demos-only start (3 demos, 150 offline updates) -> the online stage raises success
    and shortens episodes on the toy reach task."""
    from vlarl.recipes.conrft import train_conrft

    cfg = _toy(tmp_path / "run", "demos=3", "offline_steps=150", "steps=2000", "eval_every=0",
               "eval_episodes=20", "final_eval_episodes=20", "sim_human.decay_steps=1500",
               "conrft.beta_schedule.steps=2000", "seed=0")
    r = train_conrft(cfg, progress=False)
    off, on = r["summary"]["offline"], r["summary"]["online"]
    assert on["success"] >= off["success"] + 0.5, r["summary"]
    assert on["episode_length"] < off["episode_length"], r["summary"]
    assert r["offline"]["updates"] == 150


def test_offline_stage_resumes_without_repeating(tmp_path):
    from vlarl.recipes.conrft import ConRFTRecipeConfig, train_conrft
    from vlarl.runtime import Run

    cfg = _toy(tmp_path / "run", "demos=2", "offline_steps=20", "steps=0", "eval_episodes=2",
               "final_eval_episodes=2", "log_every=5")
    first = train_conrft(cfg, progress=False)
    assert first["offline"]["updates"] == 20 and first["env_steps"] == 0
    again = train_conrft(resume=Run.resume(tmp_path / "run", ConRFTRecipeConfig, ["steps=100"]), progress=False)
    assert again["offline"] == json.loads(json.dumps(first["offline"]))  # kept (read back from results.json), not re-run
    assert again["env_steps"] >= 100 and again["updates"] > 0


def test_bad_settings_are_named(tmp_path):
    from vlarl.recipes.conrft import train_conrft

    with pytest.raises(VlarlError, match="beta_schedule.kind"):
        train_conrft(_toy(tmp_path / "a", "conrft.beta_schedule.kind=cosine"), progress=False)
    with pytest.raises(VlarlError, match="gripper_critic"):
        ConRFTAgent(SACConfig(gripper_critic=True), ConRFTConfig(), 3, 4)


def test_pixel_agent_update_trains_the_projection_from_the_critic_only():
    """Pixels: the critic's encoder features feed the consistency actor detached."""
    from vlarl.algos.conrft import ConRFTLearner
    from vlarl.algos.sac import to_torch

    torch.manual_seed(0)
    cameras = {"top": (32, 32, 3)}
    agent = ConRFTAgent(SACConfig(ensemble=2, encoder="conv", feature_dim=16, hidden=32), ConRFTConfig(),
                        state_dim=2, action_dim=2, cameras=cameras)
    learner = ConRFTLearner(agent, torch.Generator().manual_seed(0))
    buf = ReplayBuffer(64, 2, 2, cameras, mc_gamma=0.9)
    rng = np.random.default_rng(0)

    def obs():
        return {"state": rng.standard_normal(2).astype(np.float32),
                "pixels": {"top": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)}}

    buf.start_episode(obs())
    for i in range(20):
        buf.add(rng.uniform(-1, 1, 2).astype(np.float32), float(i == 19), obs(), terminated=i == 19)
    batch = to_torch(buf.sample(8, 1), torch.device("cpu"))[0]
    proj = agent.critic.pixels.proj[0].weight
    # the actor step alone leaves the projection untouched
    learner.actor_opt.zero_grad()
    loss, _ = actor_loss(agent, batch, eta=1.0, beta=1.0)
    loss.backward()
    assert proj.grad is None
    # a full offline update moves it (critic) and the actor
    before, actor_before = proj.detach().clone(), agent.actor.net[0].weight.detach().clone()
    learner.offline = True
    info = learner.update([batch])
    assert not torch.equal(before, proj) and not torch.equal(actor_before, agent.actor.net[0].weight)
    assert torch.isfinite(info["critic_loss"]) and "calql_diff" in info


def test_q_term_normalised_by_mean_abs_q():
    torch.manual_seed(0)
    batch = {"obs": {"state": torch.randn(5, 3)}, "action": torch.rand(5, 2) * 2 - 1}
    raw = ConRFTAgent(SACConfig(ensemble=2), ConRFTConfig(q_normalize=False), state_dim=3, action_dim=2)
    norm = ConRFTAgent(SACConfig(ensemble=2), ConRFTConfig(q_normalize=True), state_dim=3, action_dim=2)
    norm.load_state_dict(raw.state_dict())
    torch.manual_seed(1)
    loss_raw, info = actor_loss(raw, batch, eta=2.0, beta=0.0)
    torch.manual_seed(1)
    loss_norm, _ = actor_loss(norm, batch, eta=2.0, beta=0.0)
    assert loss_raw.item() == pytest.approx(-2.0 * info["q_pi"].item(), rel=1e-5)
    with torch.no_grad():
        torch.manual_seed(1)
        q = raw.critic(raw.critic.features(batch["obs"]), raw.actor(batch["obs"]["state"])).mean(0)
    assert loss_norm.item() == pytest.approx(-2.0 * q.mean().item() / q.abs().mean().item(), rel=1e-5)


def test_actor_climbs_the_critic_and_beta_trades_it_against_the_demos():
    """With a critic whose best action is +0.5 everywhere and demos at -0.5, the actor goes to
    +0.5 on the Q term alone, to -0.5 on BC alone, and in between with both."""
    def train(eta: float, beta: float) -> float:
        torch.manual_seed(0)
        cfg = ConRFTConfig(policy=ConsistencyConfig(hidden=64), q_normalize=False)  # the raw trade-off
        agent = ConRFTAgent(SACConfig(ensemble=2, hidden=64), cfg, state_dim=1, action_dim=1)
        copt = torch.optim.Adam(agent.critic.parameters(), lr=3e-3)
        for _ in range(300):  # the critic: Q(s, a) = -(a - 0.5)^2, fitted by regression
            s, a = torch.rand(256, 1) * 2 - 1, torch.rand(256, 1) * 2 - 1
            loss = ((agent.critic(s, a) - (-(a - 0.5) ** 2).squeeze(-1)) ** 2).mean()
            copt.zero_grad()
            loss.backward()
            copt.step()
        aopt = torch.optim.Adam(agent.actor.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(300):
            s = torch.rand(128, 1) * 2 - 1
            batch = {"obs": {"state": s}, "action": torch.full((128, 1), -0.5)}
            loss, _ = actor_loss(agent, batch, eta=eta, beta=beta, generator=gen)
            aopt.zero_grad()
            loss.backward()
            aopt.step()
        with torch.no_grad():
            return agent.actor.mode(torch.linspace(-1, 1, 64)[:, None]).mean().item()

    q_only, bc_only, both = train(1.0, 0.0), train(0.0, 1.0), train(1.0, 0.3)
    assert abs(q_only - 0.5) < 0.1 and abs(bc_only + 0.5) < 0.1
    assert bc_only + 0.1 < both < q_only - 0.1
