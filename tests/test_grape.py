"""GRAPE: the TPO loss by hand, the windowed gradient, GCPG scores and pairing, stage costs
on crafted states, the cost generator's validation and its endpoint (a local fake server),
a learning test of the rule, and the recipe end to end on the toy task."""

import http.server
import json
import math
import threading

import numpy as np
import pytest
import torch

from vlarl.algos.grape import GCPGWeights, TPOConfig, gcpg_score, preference_pairs, tpo_loss, tpo_step
from vlarl.envs.cost_generator import CostGeneratorConfig, compile_stage_costs, generate_costs, validate_cost_code
from vlarl.envs.stage_costs import (HAND_WRITTEN, KeepOutZone, Stage, TaskCosts, hand_written_costs, keypoints,
                                    objective_costs, stage_report)
from vlarl.errors import VlarlError


# --- TPO ----------------------------------------------------------------------------------
def test_tpo_loss_by_hand():
    logp_w, ref_w = torch.tensor([-10.0, -5.0]), torch.tensor([-11.0, -5.0])
    logp_l, ref_l = torch.tensor([-12.0, -4.0]), torch.tensor([-11.0, -5.0])
    loss, stats = tpo_loss(logp_w, logp_l, ref_w, ref_l, beta=0.1)
    # pair 1: (1) - (-1) = 2 -> -log σ(0.2); pair 2: (0) - (1) = -1 -> -log σ(-0.1)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = (-math.log(sig(0.2)) - math.log(sig(-0.1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["pair_accuracy"] == 0.5 and stats["reward_margin"] == pytest.approx(0.1 * (2 - 1) / 2)
    # identical to the reference: log 2, whatever beta
    same, _ = tpo_loss(ref_w, ref_l, ref_w, ref_l, beta=3.0)
    assert same.item() == pytest.approx(math.log(2))


def _linear_policy(seed=0, bins=5, dim=3):
    torch.manual_seed(seed)
    return torch.nn.Linear(dim, bins)


def _toy_trajectories(n=4, lengths=(7, 5, 9, 6), dim=3, bins=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(t, dim, generator=g), torch.randint(0, bins, (t,), generator=g)) for t in lengths[:n]]


def test_tpo_step_windowed_gradient_is_exact():
    """Window by window (window 2) gives the gradient of the whole-trajectory loss."""
    trajs = _toy_trajectories()
    lengths = [len(a) for _, a in trajs]
    pairs, ref = [(0, 1), (2, 3)], torch.tensor([-8.0, -6.0, -12.0, -9.0])
    cfg = TPOConfig(beta=0.5, window=2, grad_clip=1e9, sft_weight=0.3)
    grads = []
    for window in (2, 1000):
        net = _linear_policy()
        step = lambda j, s, e, net=net: net(trajs[j][0][s:e]).log_softmax(-1).gather(  # noqa: E731
            -1, trajs[j][1][s:e, None]).squeeze(-1)
        tpo_step(step, lengths, pairs, ref, list(net.parameters()), torch.optim.SGD(net.parameters(), lr=0.0),
                 TPOConfig(**{**cfg.__dict__, "window": window}))
        grads.append([p.grad.clone() for p in net.parameters()])
    # and by direct autograd through the full sums
    net = _linear_policy()
    logp = torch.stack([net(o).log_softmax(-1).gather(-1, a[:, None]).sum() for o, a in trajs])
    loss, _ = tpo_loss(logp[[0, 2]], logp[[1, 3]], ref[[0, 2]], ref[[1, 3]], cfg.beta)
    loss = loss + cfg.sft_weight * -(logp[[0, 2]] / torch.tensor([7.0, 9.0])).mean()
    loss.backward()
    for a, b, c in zip(grads[0], grads[1], net.parameters()):
        torch.testing.assert_close(a, c.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, c.grad, rtol=1e-5, atol=1e-6)


def test_tpo_learns_to_prefer_the_winning_behaviour():
    """A categorical policy over 5 actions, sampled for 10-step trajectories from random
    states; trajectories are scored by how often they chose action 3. A few iterations of
    sample -> score -> pair -> TPO against the sampling policy must make action 3 the
    argmax in most states (it starts at chance)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 5)
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(1)
    test_states = torch.randn(200, 4, generator=g)

    def argmax_rate():
        with torch.no_grad():
            return float((net(test_states).argmax(-1) == 3).float().mean())

    before = argmax_rate()
    cfg = TPOConfig(beta=0.1, window=4, grad_clip=10.0, sft_weight=0.0)  # pure TPO: the rule alone
    for _ in range(6):
        obs = [torch.randn(10, 4, generator=g) for _ in range(16)]
        with torch.no_grad():
            acts = [torch.distributions.Categorical(logits=net(o)).sample() for o in obs]
        scores = [float((a == 3).float().mean()) for a in acts]
        pairs = preference_pairs(scores, m=4)

        def step(j, s, e):
            return net(obs[j][s:e]).log_softmax(-1).gather(-1, acts[j][s:e, None]).squeeze(-1)

        lengths = [10] * 16
        from vlarl.algos.grape import trajectory_log_probs

        ref = trajectory_log_probs(step, lengths, cfg.window)
        for _ in range(10):
            tpo_step(step, lengths, pairs, ref, list(net.parameters()), opt, cfg)
    after = argmax_rate()
    assert before < 0.5 and after >= 0.9, (before, after)


def test_gcpg_score_by_hand():
    w = GCPGWeights()
    assert gcpg_score(-120.0, 0.5, True, w) == pytest.approx(0.01 * -120 + 0.5 + 5)
    assert gcpg_score(-80.0, 0.9, False, GCPGWeights(0.0, 2.0, 1.0)) == pytest.approx(1.8)


def test_preference_pairs():
    assert preference_pairs([3, 1, 5, 2, 4, 0], m=2) == [(2, 5), (4, 1)]
    assert preference_pairs([3, 1, 5], m=4) == [(2, 1)]  # m capped at len // 2
    assert preference_pairs([2, 2, 2, 2], m=2) == []  # no preference among equals
    assert preference_pairs([1, 1, 3, 0], m=2) == [(2, 3)]  # the tied middle pair is dropped
    # within groups (start states): each group's best with its worst
    assert preference_pairs([1, 5, 2, 9, 0, 3], m=1, groups=[0, 0, 0, 1, 1, 1]) == [(1, 0), (3, 4)]
    with pytest.raises(VlarlError, match="pairs per task"):
        preference_pairs([1, 2], m=0)


# --- stage costs --------------------------------------------------------------------------
def _mw(hand, obj, goal, gripper=1.0):
    p = np.zeros(39)
    p[0:3], p[3], p[4:7], p[36:39] = hand, gripper, obj, goal
    return keypoints("metaworld/drawer-open", p)


def test_keypoints_layout():
    k = _mw([1, 2, 3], [4, 5, 6], [7, 8, 9], 0.5)
    assert k["hand"].tolist() == [1, 2, 3] and k["obj"].tolist() == [4, 5, 6] and k["goal"].tolist() == [7, 8, 9]
    assert k["gripper"] == 0.5
    p = np.arange(21, dtype=float)
    k = keypoints("panda/pick-cube", p)
    assert k["hand"].tolist() == [15, 16, 17] and k["obj"].tolist() == [18, 19, 20] and k["gripper"] == 14
    with pytest.raises(VlarlError, match="stage costs"):
        keypoints("nowhere/task", p)


def test_drawer_stages_on_crafted_states():
    costs = hand_written_costs("metaworld/drawer-open")
    handle, goal = np.array([0.0, 0.73, 0.09]), np.array([0.0, 0.54, 0.09])
    far = _mw([0.0, 0.4, 0.3], handle, goal)  # 0.3+ m from the handle
    near = _mw([0.0, 0.68, 0.09], handle, goal)  # 5 cm: under the 6 cm threshold
    pulled_half = _mw([0.0, 0.6, 0.09], [0.0, 0.64, 0.09], goal)  # handle 10 cm from the goal
    pulled = _mw([0.0, 0.55, 0.09], [0.0, 0.56, 0.09], goal)  # 2 cm: under 3 cm

    rep = stage_report(costs, [far, near, pulled_half, pulled])
    assert rep.starts == [0, 1] and rep.done == [True, True] and rep.costs == [0.0, 0.0] and rep.r_ext == 1.0
    rep = stage_report(costs, [far, near, pulled_half])  # reached, pulled half way
    assert rep.done == [True, False]
    assert rep.costs[1] == pytest.approx(10 * 0.10 - 0.3)
    assert rep.r_ext == pytest.approx(math.exp(-0.7))
    # never reached: the reach stage is charged its best distance, the pull stage at the last state
    rep = stage_report(costs, [far, far])
    reach = 10 * np.linalg.norm(np.array([0.0, 0.4, 0.3]) - handle) - 0.6
    assert rep.starts == [0, -1] and rep.costs[0] == pytest.approx(reach)
    assert rep.costs[1] == pytest.approx(10 * 0.19 - 0.3)
    # a stage done before the previous one finished does not count: the pull is checked from the reach on
    early = _mw([0.0, 0.4, 0.3], [0.0, 0.55, 0.09], goal)  # drawer open, hand far (impossible, but crafted)
    rep = stage_report(costs, [early, far])
    assert rep.done == [False, False]


def test_pick_cube_stages_on_crafted_states():
    costs = hand_written_costs("panda/pick-cube")

    def pk(hand, cube, grip):
        p = np.zeros(21)
        p[14], p[15:18], p[18:21] = grip, hand, cube
        return keypoints("panda/pick-cube", p)

    cube = [0.4, 0.1, 0.02]
    traj = [pk([0.4, 0.1, 0.2], cube, 0.0), pk([0.4, 0.1, 0.03], cube, 0.0), pk([0.4, 0.1, 0.03], cube, 1.0),
            pk([0.4, 0.1, 0.13], [0.4, 0.1, 0.125], 1.0)]
    rep = stage_report(costs, traj)
    assert rep.done == [True, True, True] and rep.starts == [0, 1, 2]
    rep = stage_report(costs, traj[:3])  # grasped, not lifted: charged the remaining 10 cm
    assert rep.done == [True, True, False] and rep.costs[2] == pytest.approx(10 * (0.12 - 0.02))


def test_objectives_add_their_penalties():
    zone = KeepOutZone(low=[-0.1, 0.5, 0.0], high=[0.1, 0.6, 0.2])
    handle, goal = [0.0, 0.73, 0.09], [0.0, 0.54, 0.09]
    inside, outside = _mw([0.0, 0.55, 0.1], handle, goal), _mw([0.3, 0.55, 0.1], handle, goal)
    base = hand_written_costs("metaworld/drawer-open")
    traj = [outside, inside, inside, outside]
    plain = stage_report(base, traj)
    safe = stage_report(objective_costs(base, "safety", zone, safety_weight=0.5), traj)
    assert safe.penalties == {"hand inside the keep-out zone": 1.0}  # 2 steps x 0.5
    assert safe.r_ext == pytest.approx(plain.r_ext * math.exp(-1.0))
    eff = stage_report(objective_costs(base, "efficiency", efficiency_weight=0.02), traj)
    assert eff.penalties == {"steps": pytest.approx(0.06)}  # 3 steps after the first state
    assert objective_costs(base, "task") is base
    with pytest.raises(VlarlError, match="keep_out"):
        objective_costs(base, "safety", None)
    with pytest.raises(VlarlError, match="objective"):
        objective_costs(base, "speed")
    with pytest.raises(VlarlError, match="low"):
        KeepOutZone(low=[0, 0, 0], high=[1, -1, 1])


@pytest.mark.parametrize("env_name", sorted(set(HAND_WRITTEN) - {"toy/reach"}))
def test_expert_completes_every_stage_and_random_does_not(env_name):
    from vlarl.envs import make

    costs = hand_written_costs(env_name)
    env = make(env_name, obs_mode="state")
    try:
        reports = {}
        for mode in ("expert", "random"):
            rng = np.random.default_rng(0)
            env.reset(seed=3)
            traj = [keypoints(env_name, env.unwrapped.privileged_state())]
            for _ in range(150):
                a = env.unwrapped.expert_action() if mode == "expert" else rng.uniform(-1, 1, env.action_space.shape)
                _, _, term, trunc, info = env.step(a.astype(np.float32))
                traj.append(keypoints(env_name, env.unwrapped.privileged_state()))
                if term or trunc:
                    break
            reports[mode] = (stage_report(costs, traj), info["is_success"])
    finally:
        env.close()
    (expert, ok), (rand, rand_ok) = reports["expert"], reports["random"]
    assert ok and all(expert.done) and expert.r_ext == 1.0
    assert not rand_ok and not all(rand.done) and rand.r_ext < 0.5


# --- cost generator -----------------------------------------------------------------------
GOOD = '''
def reach(k):
    return dist(k["hand"], k["obj"]) * 10

def pull(k):
    return abs(k["obj"][1] - k["goal"][1]) * 10

STAGES = [("reach", reach, 0.6), ("pull", pull, 0.3)]
'''


def test_generated_costs_compile_and_agree_with_hand_written():
    sample = _mw([0.0, 0.4, 0.3], [0.0, 0.73, 0.09], [0.0, 0.54, 0.09])
    costs = compile_stage_costs(GOOD, sample)
    assert [s.name for s in costs.stages] == ["reach", "pull"] and [s.threshold for s in costs.stages] == [0.6, 0.3]
    hand = hand_written_costs("metaworld/drawer-open")
    for gen, ref in zip(costs.stages, hand.stages):
        assert gen.cost(sample) == pytest.approx(ref.cost(sample))


@pytest.mark.parametrize("code, reason", [
    ("import os\nSTAGES = []", "Import"),
    ("def f(k):\n    return k.__class__\nSTAGES = [('a', f, 0.1)]", "Attribute"),
    ("def f(k):\n    return open('/etc/passwd')\nSTAGES = [('a', f, 0.1)]", "may be called"),
    ("def f(k):\n    return __builtins__\nSTAGES = [('a', f, 0.1)]", "name '__builtins__'"),
    ("def f(k):\n    return __import__('os')\nSTAGES = [('a', f, 0.1)]", "may be called"),
    ("def f(k):\n    while True:\n        pass\nSTAGES = [('a', f, 0.1)]", "While"),
    ("def f(k):\n    return 10 ** 10 ** 10\nSTAGES = [('a', f, 0.1)]", "constant exponent"),
    ("print('hi')\nSTAGES = []", "top level"),
    ("def f(k):\n    return [x for x in k]\nSTAGES = [('a', f, 0.1)]", "ListComp"),
    ("def f(k) return 1", "does not parse"),
    ("def f(k):\n    return -1.0\nSTAGES = [('a', f, 0.1)]", "finite and >= 0"),
    ("def f(k):\n    return k['nope']\nSTAGES = [('a', f, 0.1)]", "failed on a sample state"),
    ("def f(k):\n    return 1.0\nSTAGES = [('a', f, -0.1)]", "threshold >= 0"),
    ("def f(k):\n    return 1.0\n", "STAGES must be"),
])
def test_generated_code_that_does_not_validate_is_rejected(code, reason):
    sample = _mw([0.0, 0.4, 0.3], [0.0, 0.73, 0.09], [0.0, 0.54, 0.09])
    with pytest.raises(VlarlError, match=reason):
        compile_stage_costs(code, sample)


def test_validation_happens_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w')\nSTAGES = []"
    with pytest.raises(VlarlError):
        validate_cost_code(code)
    assert not marker.exists()


class _FakeLLM(http.server.BaseHTTPRequestHandler):
    reply = ""
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": type(self).reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_llm():
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeLLM.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_generator_against_a_local_fake_server(fake_llm, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    sample = _mw([0.0, 0.4, 0.3], [0.0, 0.73, 0.09], [0.0, 0.54, 0.09])
    cfg = CostGeneratorConfig(kind="openai", base_url=fake_llm, model="tiny", api_key_env="FAKE_KEY")
    _FakeLLM.reply = "Here are the costs:\n```python\n" + GOOD + "```\nDone."
    costs, code = generate_costs(cfg, "metaworld/drawer-open", "open the drawer", sample)
    assert code.strip() == GOOD.strip() and len(costs.stages) == 2
    [req] = _FakeLLM.seen
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "tiny" and req["auth"] == "Bearer sk-test"
    assert "open the drawer" in req["body"]["messages"][0]["content"]
    # a reply whose code does not validate is rejected, not run
    _FakeLLM.reply = "```python\nimport os\nos.system('echo hi')\nSTAGES = []\n```"
    with pytest.raises(VlarlError, match="Import"):
        generate_costs(cfg, "metaworld/drawer-open", "open the drawer", sample)


def test_generator_errors_are_named():
    with pytest.raises(VlarlError, match="costs.kind"):
        generate_costs(CostGeneratorConfig(kind="llm"), "metaworld/drawer-open", "", {})
    cfg = CostGeneratorConfig(kind="openai", base_url="http://127.0.0.1:9/v1", timeout_s=2)
    with pytest.raises(VlarlError, match="127.0.0.1:9"):
        generate_costs(cfg, "metaworld/drawer-open", "open the drawer", {})
    # the default: hand-written, no code
    costs, code = generate_costs(CostGeneratorConfig(), "metaworld/drawer-open", "", {})
    assert code is None and costs is hand_written_costs("metaworld/drawer-open")
    assert isinstance(costs, TaskCosts) and isinstance(costs.stages[0], Stage)


# --- the recipe on the toy task -----------------------------------------------------------
TOY = dict(name="toy/reach", obs_mode="state+pixels", image_size=32)


@pytest.fixture(scope="module")
def toy_sft(tmp_path_factory):
    from vlarl.models.policy import PolicyConfig
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
    from vlarl.recipes.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("grape")
    collect(CollectConfig(env=EnvConfig(**TOY), episodes=5, noise=0.1, out=str(root / "demos")), progress=False)
    runs = {}
    for head, steps in (("tokens", 300), ("deterministic", 1)):
        runs[head] = root / f"sft-{head}"
        train_sft(SFTConfig(datasets=[str(root / "demos")], steps=steps, batch_size=64, lr=1e-3,
                            policy=PolicyConfig(encoder="conv", dim=64, layers=1, head=head), eval_episodes=2,
                            eval_envs=1, video_episodes=0, run_dir=str(runs[head])), progress=False)
    return runs


def _grape_cfg(sft_dir, run_dir, **kw):
    from vlarl.recipes.grape import GRAPEConfig

    base = dict(sft_run=str(sft_dir), iterations=1, samples_per_task=8, pairs_per_task=2, eval_episodes=6,
                eval_envs=2, sample_envs=2, video_episodes=0, tpo=TPOConfig(lr=1e-3, epochs=3, batch_pairs=2),
                keep_out=KeepOutZone(low=[-0.3, -0.3, -1.0], high=[0.3, 0.3, 1.0]), run_dir=str(run_dir))
    base.update(kw)
    return GRAPEConfig(**base)


def test_rollouts_with_one_seed_share_start_states(toy_sft):
    from vlarl.models.language import InstructionEncoder
    from vlarl.recipes.grape import rollouts
    from vlarl.recipes.sft import load_sft_policy

    policy, spec = load_sft_policy(toy_sft["tokens"], torch.device("cpu"))
    instruction, task = next(iter(spec["tasks"].items()))
    lang = InstructionEncoder()([instruction])
    runs = [rollouts(policy, lang, "toy/reach", task["options"], 6, 2, seed=5, sample=True, record=True,
                     progress=False) for _ in range(2)]
    starts = [{t.start: t.keypoints[0]["goal"].tolist() + t.keypoints[0]["hand"].tolist() for t in r} for r in runs]
    assert sorted(starts[0]) == list(range(6)) and starts[0] == starts[1]
    t = runs[0][0]
    assert t.tokens.dtype == torch.float16 and len(t.tokens) == len(t.actions) == len(t.state) == len(t.keypoints) - 1
    # sampled actions are exactly representable as tokens: re-scoring them is exact
    tok = policy.head.tokenize(t.actions)
    assert torch.equal(policy.head.detokenize(tok), t.actions)
    # the recorded tokens are what the policy acted on: its argmax from them is the recorded action
    t = rollouts(policy, lang, "toy/reach", task["options"], 2, 2, seed=5, sample=False, record=True, progress=False)[0]
    with torch.no_grad():
        again = policy.head(policy.features(t.tokens, t.state, lang.expand(len(t.state), -1)))[:, 0]
    assert torch.equal(again, t.actions)


def test_grape_recipe_runs_resumes_and_reports(toy_sft, tmp_path):
    from vlarl.recipes.grape import train_grape
    from vlarl.runtime import Run

    run_dir = tmp_path / "grape"
    r = train_grape(_grape_cfg(toy_sft["tokens"], run_dir, objective="safety"), progress=False)
    assert [h["iteration"] for h in r["iterations"]] == ["sft", "1"]
    it = r["iterations"][1]
    assert it["pairs"] > 0 and it["tpo"]["steps"] == 3 * math.ceil(it["pairs"] / 2)
    # TPO fits its pairs: the loss falls and the implicit reward margin grows over the steps
    assert it["tpo"]["tpo_loss_last"] < it["tpo"]["tpo_loss_first"]
    assert it["tpo"]["reward_margin_last"] > it["tpo"]["reward_margin_first"]
    task = it["per_task"]["toy/reach"]
    assert task["episodes"] == 6 and 0 <= task["violation_rate"] <= 1 and "mean_r_ext" in task
    assert r["mean_success_gain"] == pytest.approx(r["success_per_iteration"][-1] - r["success_per_iteration"][0])
    assert "violation_rate_per_iteration" in r and (run_dir / "results.md").exists()
    # resume with one more iteration: only the new one runs, the first is kept as it was
    r2 = train_grape(resume=Run.resume(run_dir, type(_grape_cfg(toy_sft["tokens"], run_dir)), ["iterations=2"]),
                     progress=False)
    assert [h["iteration"] for h in r2["iterations"]] == ["sft", "1", "2"]
    assert r2["iterations"][1] == json.loads(json.dumps(it))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("tpo/tpo_loss" in row for row in rows) and any("eval/mean_success_rate" in row for row in rows)


def test_grape_errors_are_named(toy_sft, tmp_path):
    from vlarl.recipes.grape import train_grape

    with pytest.raises(VlarlError, match="log-probabilities"):
        train_grape(_grape_cfg(toy_sft["deterministic"], tmp_path / "a"), progress=False)
    with pytest.raises(VlarlError, match="keep_out"):
        train_grape(_grape_cfg(toy_sft["tokens"], tmp_path / "b", objective="safety", keep_out=None), progress=False)
    with pytest.raises(VlarlError, match="samples_per_start"):
        train_grape(_grape_cfg(toy_sft["tokens"], tmp_path / "c", samples_per_start=3), progress=False)
    with pytest.raises(VlarlError, match="tasks"):
        train_grape(_grape_cfg(toy_sft["tokens"], tmp_path / "d", tasks=["metaworld/drawer-open"]), progress=False)
    assert not (tmp_path / "b").exists()  # checked before a run directory is made


def test_sampling_temperature():
    from vlarl.models.policy import PolicyConfig, VLAPolicy
    from vlarl.recipes.grape import act

    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig(encoder="conv", dim=32, layers=1, head="tokens"), ["top"], 32, 2, 2)
    feats = torch.randn(64, 32)
    mode = act(policy, feats, sample=False)
    cold = act(policy, feats, sample=True, temperature=1e-4)  # all mass on the argmax token
    assert torch.equal(cold, mode)
    hot = torch.stack([act(policy, feats, sample=True, temperature=5.0) for _ in range(4)])
    assert (hot != mode).float().mean() > 0.9  # a near-uniform random head: almost never the mode
    det = VLAPolicy(PolicyConfig(encoder="conv", dim=32, layers=1), ["top"], 32, 2, 2)
    with pytest.raises(VlarlError, match="temperature"):
        act(det, feats, sample=True, temperature=0.5)
