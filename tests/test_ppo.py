"""PPO: GAE and the clipped loss against hand computations, distributions over every head,
and a learning test on the toy task from state."""

import math

import numpy as np
import pytest
import torch

from vlarl.algos.ppo import ActionDistribution, PPOConfig, gae, mode, ppo_loss, ppo_update
from vlarl.errors import VlarlError
from vlarl.models.heads import DeterministicHead, TanhGaussianHead, TokenHead, ValueHead


def test_gae_by_hand_with_termination_and_time_limit():
    # one env, 4 steps: step 1 terminates (success), step 3 hits the time limit
    r = torch.tensor([[0.0], [1.0], [0.0], [0.0]])
    v = torch.tensor([[0.5], [0.8], [0.2], [0.3]])
    next_v = torch.tensor([[0.8], [9.9], [0.3], [0.6]])  # 9.9 must be ignored (terminated)
    term = torch.tensor([[False], [True], [False], [False]])
    done = torch.tensor([[False], [True], [False], [True]])
    g, lam = 0.9, 0.5
    adv, ret = gae(r, v, next_v, term, done, g, lam)
    d3 = 0.0 + g * 0.6 - 0.3  # bootstrapped from the final observation
    d2 = 0.0 + g * 0.3 - 0.2
    d1 = 1.0 - 0.8  # no bootstrap after a true end
    d0 = 0.0 + g * 0.8 - 0.5
    a3, a2 = d3, d2 + g * lam * d3
    a1 = d1  # the trace stops at the episode end
    a0 = d0 + g * lam * a1
    assert adv.squeeze(1).tolist() == pytest.approx([a0, a1, a2, a3])
    assert ret.squeeze(1).tolist() == pytest.approx([a0 + 0.5, a1 + 0.8, a2 + 0.2, a3 + 0.3])


def test_gae_with_lambda_one_is_the_discounted_return():
    r = torch.tensor([[0.0], [0.0], [1.0]])
    v = torch.zeros(3, 1)
    adv, _ = gae(r, v, torch.zeros(3, 1), torch.tensor([[False], [False], [True]]),
                 torch.tensor([[False], [False], [True]]), 0.9, 1.0)
    assert adv.squeeze(1).tolist() == pytest.approx([0.81, 0.9, 1.0])


def test_ppo_loss_clipping_by_hand():
    cfg = PPOConfig(clip=0.2, vf_coef=0.5, ent_coef=0.01, normalize_advantages=False)
    old = torch.zeros(4)
    # ratios e^x: 1.5 (A>0: clipped to 1.2), 0.5 (A>0: unclipped 0.5 is smaller),
    #             1.5 (A<0: unclipped -1.5 is smaller), 0.5 (A<0: clipped to 0.8)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    values, returns, ent = torch.tensor([1.0, 0.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.full((4,), 2.0)
    loss, info = ppo_loss(logp, old, adv, values, returns, ent, cfg)
    pg = -np.mean([1.2 * 1, 0.5 * 1, 1.5 * -1, 0.8 * -1])
    v_loss = 0.5 * np.mean([1.0, 0.0, 4.0, 1.0])
    assert info["pg_loss"] == pytest.approx(pg)
    assert info["v_loss"] == pytest.approx(v_loss)
    assert loss.item() == pytest.approx(pg + 0.5 * v_loss - 0.01 * 2.0)
    assert info["clipfrac"] == pytest.approx(1.0)
    # gradient flows only through the unclipped terms (samples 1 and 2)
    lp = logp.clone().requires_grad_(True)
    ppo_loss(lp, old, adv, values, returns, ent, cfg)[0].backward()
    assert lp.grad.tolist() == pytest.approx([0.0, -0.5 / 4, 1.5 / 4, 0.0])


def test_advantages_are_normalised_per_minibatch():
    cfg = PPOConfig(normalize_advantages=True, vf_coef=0.0)
    adv = torch.tensor([1.0, 3.0])
    _, info = ppo_loss(torch.zeros(2), torch.zeros(2), adv, torch.zeros(2), torch.zeros(2), torch.zeros(2), cfg)
    assert info["pg_loss"] == pytest.approx(0.0, abs=1e-6)  # ratio 1: -mean of normalised advantages


def test_distributions_over_every_head():
    torch.manual_seed(0)
    feats = torch.randn(5, 8)
    det = ActionDistribution(DeterministicHead(8, 3), init_log_std=math.log(0.3))
    d = det(feats)
    a = d.sample()
    mean = det.head(feats)[:, 0]
    by_hand = (-0.5 * ((a - mean) / 0.3) ** 2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(d.log_prob(a), by_hand, atol=1e-5)
    assert torch.allclose(mode(d), mean)
    assert d.entropy().shape == (5,)

    tok = ActionDistribution(TokenHead(8, 3, bins=16))
    d = tok(feats)
    a = d.sample()
    assert a.shape == (5, 3) and ((a >= -1) & (a <= 1)).all()
    assert torch.allclose(d.log_prob(a), tok.head.log_prob(feats, a[:, None]), atol=1e-5)
    assert torch.allclose(tok.head.tokenize(mode(d)), tok.head.logits(feats)[:, 0].argmax(-1))

    tg = ActionDistribution(TanhGaussianHead(8, 3))
    d = tg(feats)
    a = d.sample()
    assert torch.allclose(d.log_prob(a), tg.head.log_prob(feats, a[:, None]))
    assert d.entropy().shape == (5,)

    with pytest.raises(VlarlError, match="chunks of 4"):
        ActionDistribution(DeterministicHead(8, 3, chunk=4))


def test_target_kl_stops_the_epochs():
    torch.manual_seed(0)
    actor, value = ActionDistribution(DeterministicHead(4, 2), -1.0), ValueHead(4)
    feats = torch.randn(64, 4)
    with torch.no_grad():
        d = actor(feats)
        actions = d.sample()
        old = d.log_prob(actions)
    params = list(actor.parameters()) + list(value.parameters())
    cfg = PPOConfig(lr=0.05, epochs=50, minibatch_size=64, target_kl=0.01)

    def evaluate(idx, a):
        d = actor(feats[idx])
        return d.log_prob(a), d.entropy(), value(feats[idx])

    info = ppo_update(evaluate, actions, old, torch.randn(64), torch.zeros(64), params,
                      torch.optim.Adam(params, lr=cfg.lr), cfg)
    assert info["epochs_run"] < 50


def _toy_ppo(iterations: int, seed: int = 0) -> list[float]:
    """PPO from scratch on toy/reach (state, dense reward -distance); success per rollout."""
    from vlarl.envs import make_vec

    torch.manual_seed(seed)
    vec = make_vec("toy/reach", 4, asynchronous=False, obs_mode="state", reward="dense")
    actor, value = ActionDistribution(DeterministicHead(4, 2), -0.5), ValueHead(4)
    cfg = PPOConfig(lr=3e-3, gamma=0.95, target_kl=None)
    params = list(actor.parameters()) + list(value.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    obs, _ = vec.reset(seed=seed)
    history = []
    try:
        for _ in range(iterations):
            buf: dict[str, list] = {k: [] for k in ("s", "a", "logp", "v", "r", "term", "done", "next_v")}
            finished = []
            for _t in range(128):
                s = torch.as_tensor(obs["state"], dtype=torch.float32)
                with torch.no_grad():
                    d = actor(s)
                    a = d.sample()
                    buf["logp"].append(d.log_prob(a))
                    buf["v"].append(value(s))
                buf["s"].append(s)
                buf["a"].append(a)
                obs, r, term, trunc, info = vec.step(a.clamp(-1, 1).numpy())
                next_v = torch.zeros(4)
                for i in np.flatnonzero(trunc & ~term):
                    with torch.no_grad():
                        next_v[i] = value(torch.as_tensor(info["final_obs"][i]["state"], dtype=torch.float32)[None])[0]
                finished += [bool(info["final_info"]["is_success"][i]) for i in np.flatnonzero(term | trunc)]
                buf["r"].append(torch.as_tensor(r, dtype=torch.float32))
                buf["term"].append(torch.as_tensor(term))
                buf["done"].append(torch.as_tensor(term | trunc))
                buf["next_v"].append(next_v)
            with torch.no_grad():
                last = value(torch.as_tensor(obs["state"], dtype=torch.float32))
            v, done = torch.stack(buf["v"]), torch.stack(buf["done"])
            next_v = torch.where(done, torch.stack(buf["next_v"]), torch.cat([v[1:], last[None]]))
            adv, ret = gae(torch.stack(buf["r"]), v, next_v, torch.stack(buf["term"]), done, cfg.gamma, cfg.gae_lambda)
            s_all, a_all = torch.cat(buf["s"]), torch.cat(buf["a"])

            def evaluate(idx, a, s_all=s_all):
                d = actor(s_all[idx])
                return d.log_prob(a), d.entropy(), value(s_all[idx])

            ppo_update(evaluate, a_all, torch.cat(buf["logp"]), adv.flatten(), ret.flatten(), params, opt, cfg, gen)
            history.append(float(np.mean(finished)) if finished else 0.0)
    finally:
        vec.close()
    return history


def test_ppo_learns_toy_reach_from_scratch():
    history = _toy_ppo(25)
    assert np.mean(history[:3]) < 0.3, history  # a random policy rarely reaches the target
    assert np.mean(history[-3:]) >= 0.8, history
