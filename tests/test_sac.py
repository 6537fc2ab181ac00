import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vlarl.errors import VlarlError

from vlarl.algos.sac import (SACAgent, SACConfig, SACLearner, SoftUpdate, critic_loss, gripper_index, gripper_target,
                             td_target, temperature_loss)


def tiny_agent(**kw):
    torch.manual_seed(0)
    cfg = SACConfig(ensemble=3, subset=2, hidden=8, layers=2, **kw)
    return SACAgent(cfg, state_dim=2, action_dim=1)


def batch(n=4):
    g = torch.Generator().manual_seed(1)
    return {"obs": {"state": torch.randn(n, 2, generator=g)}, "next_obs": {"state": torch.randn(n, 2, generator=g)},
            "action": torch.rand(n, 1, generator=g) * 2 - 1, "reward": torch.randn(n, generator=g),
            "terminated": torch.tensor([False, True, False, True][:n])}


def test_td_target_matches_hand_computation():
    agent = tiny_agent(gamma=0.9)
    b = batch()
    subset = torch.tensor([2, 0])
    torch.manual_seed(5)
    y = td_target(agent, b, subset)
    torch.manual_seed(5)  # the same next-action sample, by hand
    next_a, next_logp = agent.actor(b["next_obs"]["state"])
    q = agent.target_critic(b["next_obs"]["state"], next_a)  # (3, B)
    soft_min = torch.minimum(q[2], q[0]) - agent.alpha * next_logp
    expected = b["reward"] + 0.9 * (1 - b["terminated"].float()) * soft_min
    torch.testing.assert_close(y, expected)
    # terminated transitions bootstrap nothing
    torch.testing.assert_close(y[b["terminated"]], b["reward"][b["terminated"]])
    # without the entropy backup the alpha term disappears
    agent.cfg.backup_entropy = False
    torch.manual_seed(5)
    y2 = td_target(agent, b, subset)
    torch.testing.assert_close(y2, b["reward"] + 0.9 * (1 - b["terminated"].float()) * torch.minimum(q[2], q[0]))
    agent.cfg.reward_scale = 0.1  # only the reward is scaled
    torch.manual_seed(5)
    y3 = td_target(agent, b, subset)
    torch.testing.assert_close(y3, 0.1 * b["reward"] + 0.9 * (1 - b["terminated"].float()) * torch.minimum(q[2], q[0]))


def test_critic_subset_is_distinct():
    agent = tiny_agent()
    seen = set()
    for s in range(50):
        torch.manual_seed(s)
        idx = torch.randperm(agent.cfg.ensemble)[: agent.cfg.subset]
        assert len(set(idx.tolist())) == agent.cfg.subset
        seen.add(tuple(sorted(idx.tolist())))
    assert len(seen) == 3  # every pair of the 3 critics gets drawn
    assert critic_loss(agent, batch()).ndim == 0


def test_temperature_moves_the_right_way():
    agent = tiny_agent(init_temperature=1.0)
    opt = torch.optim.SGD([agent.log_alpha], lr=0.1)
    # entropy below target (log-prob high): alpha must grow
    high_logp = torch.full((4,), -agent.target_entropy + 1.0)
    temperature_loss(agent, high_logp).backward()
    opt.step()
    assert agent.alpha.item() > 1.0
    opt.zero_grad()
    before = agent.alpha.item()
    temperature_loss(agent, torch.full((4,), -agent.target_entropy - 1.0)).backward()
    opt.step()
    assert agent.alpha.item() < before


def test_soft_update_and_update_step():
    agent = tiny_agent(tau=0.5)
    target = [p.detach().clone() for p in agent.target_critic.parameters()]
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    SoftUpdate(agent.target_critic, agent.critic)(0.5)
    for t0, t1, s in zip(target, agent.target_critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(t1, 0.5 * t0 + 0.5 * s)
    learner = SACLearner(agent)
    actor_before = [p.detach().clone() for p in agent.actor.parameters()]
    info = learner.update([batch(), batch()])
    assert set(info) >= {"critic_loss", "actor_loss", "alpha", "entropy"}
    assert any(not torch.equal(a, p) for a, p in zip(actor_before, agent.actor.parameters()))


def test_soft_update_leaves_frozen_parameters_alone():
    source = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    target = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    source[0].requires_grad_(False)
    frozen_before = [p.detach().clone() for p in target[0].parameters()]
    trainable_before = [p.detach().clone() for p in target[1].parameters()]
    SoftUpdate(target, source)(0.25)
    for before, now in zip(frozen_before, target[0].parameters()):
        assert torch.equal(before, now)
    for before, now, s in zip(trainable_before, target[1].parameters(), source[1].parameters()):
        torch.testing.assert_close(now, 0.75 * before + 0.25 * s)


def gripper_agent(**kw):
    torch.manual_seed(0)
    cfg = SACConfig(ensemble=2, subset=2, hidden=16, layers=2, gripper_critic=True, **kw)
    return SACAgent(cfg, state_dim=2, action_dim=3)  # 2 continuous dims + the gripper


def test_gripper_target_is_double_dqn_by_hand():
    agent = gripper_agent(gamma=0.9)
    with torch.no_grad():  # make the target network differ from the online one
        for p in agent.target_critic.gripper.parameters():
            p.mul_(-0.5)
    b = batch()
    b["action"] = torch.tensor([[0.1, -0.2, 1.0], [0.3, 0.0, -1.0], [-0.5, 0.5, 0.2], [0.0, 0.9, 0.7]])
    y = gripper_target(agent, b)
    online = agent.critic.gripper(b["next_obs"]["state"])
    target = agent.target_critic.gripper(b["next_obs"]["state"])
    picked = target[torch.arange(4), online.argmax(-1)]  # chosen by the online net, valued by the target
    torch.testing.assert_close(y, b["reward"] + 0.9 * (1 - b["terminated"].float()) * picked)
    assert not torch.allclose(picked, target.max(-1).values)  # not plain DQN's max
    assert gripper_index(b["action"][:, -1]).tolist() == [2, 0, 1, 2]
    assert agent.actor.head.action_dim == 2  # the actor never outputs the gripper


def test_gripper_critic_learns_the_right_command():
    # one-step episodes: the reward is 1 when the command is "close" for x > 0 and "open" otherwise
    agent = gripper_agent(lr=3e-3)
    learner = SACLearner(agent)
    g = torch.Generator().manual_seed(3)
    probe = {"state": torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.7, 0.3], [-0.6, -0.2]])}
    for _ in range(300):
        state = torch.randn(64, 2, generator=g)
        command = torch.randint(0, 3, (64,), generator=g).float() - 1
        reward = (command == torch.where(state[:, 0] > 0, 1.0, -1.0)).float()
        action = torch.cat([torch.rand(64, 2, generator=g) * 2 - 1, command[:, None]], -1)
        learner.update([{"obs": {"state": state}, "next_obs": {"state": state}, "action": action, "reward": reward,
                         "terminated": torch.ones(64, dtype=torch.bool)}])
    act = agent.act(probe, deterministic=True)
    assert act.shape == (4, 3)
    assert act[:, -1].tolist() == [1.0, -1.0, 1.0, -1.0]


def test_bfloat16_critic_stays_close_to_float32():
    torch.manual_seed(0)
    agent = SACAgent(SACConfig(ensemble=3, hidden=64), state_dim=2, action_dim=1)
    b = batch()
    f, a = b["obs"]["state"], b["action"]
    q32 = agent.critic(f, a)
    agent.critic.q.hidden_dtype = torch.bfloat16
    q16 = agent.critic(f, a)
    assert q16.dtype == torch.float32 and not torch.equal(q16, q32)  # bf16 really ran, the output is fp32
    torch.testing.assert_close(q16, q32, atol=2e-2, rtol=2e-2)
    q16.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in agent.critic.q.weights)


def test_bad_critic_dtype_is_named():
    with pytest.raises(VlarlError, match="critic_dtype"):
        SACAgent(SACConfig(critic_dtype="float16"), state_dim=2, action_dim=1)


def test_compiled_critic_loss_matches_eager():
    agent = tiny_agent()
    b = batch()
    torch.manual_seed(3)
    eager = critic_loss(agent, b)
    torch.manual_seed(3)
    with torch._inductor.config.patch(fallback_random=True):  # the same random draws as eager
        compiled = torch.compile(critic_loss)(agent, b)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("critic_dtype", ["float32", "bfloat16"])
def test_sac_learns_the_toy_task(tmp_path, critic_dtype):
    from vlarl.recipes.collect import EnvConfig
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd

    cfg = RLPDConfig(env=EnvConfig(name="toy/reach", obs_mode="state"),
                     sac=SACConfig(ensemble=2, utd=4, batch_size=128, hidden=128, lr=1e-3, critic_dtype=critic_dtype),
                     steps=1500, random_steps=300, eval_every=500, eval_episodes=20, eval_envs=1, save_every=1500,
                     run_dir=str(tmp_path / "sac"))
    results = train_rlpd(cfg, progress=False)
    returns = [e["mean_return"] for e in results["evals"]]
    # a random policy scores about -23 here; learning brings the agent to the goal
    assert returns[0] < -18 and returns[-1] > -13 and returns[-1] > returns[0] + 8, returns


RUNNER = """
import sys
from vlarl.algos.sac import SACConfig
from vlarl.recipes.collect import EnvConfig
from vlarl.recipes.rlpd import RLPDConfig, train_rlpd
train_rlpd(RLPDConfig(env=EnvConfig(name="toy/reach", obs_mode="state"),
                      sac=SACConfig(ensemble=2, utd=1, batch_size=32, hidden=16),
                      steps=100000, random_steps=50, eval_every=0, save_every=100, run_dir=sys.argv[1]), progress=False)
"""


def test_killed_run_resumes_with_its_buffer(tmp_path):
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd
    from vlarl.runtime import Run

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(run_dir)])
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoints" / "step_000000300").exists():
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from vlarl.runtime import latest_checkpoint

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    step = json.loads((ckpt / "meta.json").read_text())["step"]
    assert step >= 300
    results = train_rlpd(resume=Run.resume(run_dir, RLPDConfig, [f"steps={step + 50}"]), progress=False)
    assert results["resumed_from"] == step and results["steps"] == step + 50
    # the buffer came back: all frames before the checkpoint plus those collected since
    assert results["buffer_frames"] >= step + 50 + 1


@pytest.mark.parametrize("mode", ["demos_offline", "demos_online"])
def test_demo_variants_run(tmp_path, mode):
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd

    demos = tmp_path / "demos"
    collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="state"), episodes=5, out=str(demos)),
            progress=False)
    cfg = RLPDConfig(env=EnvConfig(name="toy/reach", obs_mode="state"), demos=str(demos),
                     demos_in_online_buffer=mode == "demos_online",
                     sac=SACConfig(ensemble=2, utd=1, batch_size=16, hidden=16), steps=60, random_steps=10,
                     eval_every=0, save_every=60, run_dir=str(tmp_path / "r"))
    results = train_rlpd(cfg, progress=False)
    assert results["steps"] == 60
    if mode == "demos_online":  # the demos' frames went into the online buffer first
        assert results["buffer_frames"] > 60 + 5


def test_gripper_critic_runs_in_the_recipe_on_the_panda(tmp_path):
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd

    env = EnvConfig(name="panda/pick-cube", obs_mode="state", episode_length=30)
    demos = tmp_path / "demos"
    collect(CollectConfig(env=env, episodes=2, out=str(demos)), progress=False)
    cfg = RLPDConfig(env=env, demos=str(demos), steps=80, random_steps=0, eval_every=80, eval_episodes=2,
                     eval_envs=1, save_every=80, run_dir=str(tmp_path / "r"),
                     sac=SACConfig(ensemble=2, utd=2, batch_size=16, hidden=16, gripper_critic=True,
                                   gripper_epsilon=0.2))
    results = train_rlpd(cfg, progress=False)
    assert results["steps"] == 80 and len(results["evals"]) == 1
    from vlarl.runtime.checkpoint import latest_checkpoint, load_checkpoint
    agent = SACAgent(cfg.sac, 21, 4)
    load_checkpoint(latest_checkpoint(tmp_path / "r" / "checkpoints"), {"agent": agent})
    act = agent.act({"state": torch.zeros(5, 21)})
    assert act.shape == (5, 4) and set(act[:, -1].tolist()) <= {-1.0, 0.0, 1.0}
