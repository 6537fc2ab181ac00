"""SAC/RLPD learner throughput: vlarl vs a plain per-critic loop vs torchrl's SACLoss.

    python benchmarks/learner_throughput.py [--rounds 3] [--seconds 8] [--peer-python /path/to/python]

One "update" is RLPD's unit per env step: G = 20 critic steps (each on its own minibatch of
256) + 1 actor step + 1 temperature step, with E = 10 critics, LayerNorm MLPs 256x2, target
min over Z = 2 distinct critics. Every implementation does that work, on the same data
shapes, each in its own process, interleaved round by round; the median per implementation is
kept. Observations: state (39-d, Meta-World) and 84 px pixels with a shared conv encoder.

- vlarl: ``vlarl.algos.sac`` (stacked-weight ensemble, one batched matmul per layer), eager;
  vlarl_compiled: with ``compile=True``; vlarl_compiled_bf16: also ``critic_dtype=bfloat16``.
- plain_loop: the same maths with E separate critic networks run in a Python loop.
- torchrl: ``torchrl.objectives.SACLoss`` with ``num_qvalue_nets=E`` (run with
  ``--peer-python``, a venv with torchrl). Differences: its target is the min over all E
  critics (no Z subset), and each critic step also computes its actor and alpha losses.
- lerobot: LeRobot 0.3.3's ``SACPolicy`` (the last release that installs on Python 3.11), driven
  as its learner script drives it (run with ``--lerobot-python``); lerobot_eager: without its
  torch.compile. The peer venvs (same torch as vlarl):

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0
    /tmp/peers/bin/pip install torchrl==0.14.1 "tensordict<0.15"
    python3 -m venv /tmp/lrpeer && /tmp/lrpeer/bin/pip install torch==2.13.0
    /tmp/lrpeer/bin/pip install --no-deps lerobot==0.3.3
    /tmp/lrpeer/bin/pip install draccus==0.10.0 einops huggingface_hub safetensors termcolor \
        "gymnasium<1.0" jsonlines deepdiff "datasets<=3.6.0" imageio pyserial av

Also reports ``replay_bytes_ratio``: RAM per stored 84 px pixel transition over one uint8
image. Writes benchmarks/results/learner_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
E, Z, G, B, HIDDEN, STATE, ACT = 10, 2, 20, 256, 256, 39, 4


def _batches(obs: str, device="cpu"):
    import torch

    def one():
        o = {"state": torch.randn(B, STATE if obs == "state" else 4)}
        n = {"state": torch.randn(B, STATE if obs == "state" else 4)}
        if obs == "pixels":
            o["pixels"] = {"corner": torch.randint(0, 256, (B, 84, 84, 3), dtype=torch.uint8)}
            n["pixels"] = {"corner": torch.randint(0, 256, (B, 84, 84, 3), dtype=torch.uint8)}
        return {"obs": o, "next_obs": n, "action": torch.rand(B, ACT) * 2 - 1, "reward": torch.randn(B),
                "terminated": torch.zeros(B, dtype=torch.bool)}

    return [one() for _ in range(G)]


def run_vlarl(obs: str, seconds: float, compile: bool = False, critic_dtype: str = "float32") -> float:
    from vlarl.algos.sac import SACAgent, SACConfig, SACLearner

    cfg = SACConfig(ensemble=E, subset=Z, utd=G, batch_size=B, hidden=HIDDEN, compile=compile,
                    critic_dtype=critic_dtype)
    agent = SACAgent(cfg, STATE if obs == "state" else 4, ACT, {"corner": (84, 84, 3)} if obs == "pixels" else None)
    learner = SACLearner(agent)
    batches = _batches(obs)
    return _time(lambda: learner.update(batches), seconds)


def run_plain(obs: str, seconds: float) -> float:
    """The same SAC update with E separate critic networks in a Python loop."""
    import copy

    import torch
    from torch import nn

    from vlarl.algos.sac import Actor, PixelFeatures, SACConfig

    cfg = SACConfig(ensemble=E, subset=Z, hidden=HIDDEN)
    enc = PixelFeatures("conv", {"corner": (84, 84, 3)}, cfg.feature_dim) if obs == "pixels" else None
    fdim = (4 + cfg.feature_dim) if obs == "pixels" else STATE

    def critic():
        return nn.Sequential(nn.Linear(fdim + ACT, HIDDEN), nn.LayerNorm(HIDDEN), nn.ReLU(),
                             nn.Linear(HIDDEN, HIDDEN), nn.LayerNorm(HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1))

    critics = nn.ModuleList(critic() for _ in range(E))
    enc_t = copy.deepcopy(enc)
    targets = copy.deepcopy(critics).requires_grad_(False)
    actor = Actor(fdim, ACT, cfg)
    log_alpha = torch.zeros((), requires_grad=True)
    q_opt = torch.optim.Adam(list(critics.parameters()) + (list(enc.parameters()) if enc else []), lr=3e-4)
    pi_opt = torch.optim.Adam(actor.parameters(), lr=3e-4)
    a_opt = torch.optim.Adam([log_alpha], lr=3e-4)

    def feats(o, e):
        return o["state"] if e is None else torch.cat([o["state"], e(o["pixels"])], -1)

    def q(nets, f, a):
        return torch.stack([n(torch.cat([f, a], -1)).squeeze(-1) for n in nets])

    batches = _batches(obs)

    def update():
        for b in batches:
            with torch.no_grad():
                nf = feats(b["next_obs"], enc)
                na, nlogp = actor(nf)
                idx = torch.randperm(E)[:Z]
                nft = feats(b["next_obs"], enc_t)
                qn = torch.stack([targets[int(i)](torch.cat([nft, na], -1)).squeeze(-1) for i in idx]).min(0).values
                y = b["reward"] + 0.99 * (qn - log_alpha.exp() * nlogp)
            loss = ((q(critics, feats(b["obs"], enc), b["action"]) - y) ** 2).mean()
            q_opt.zero_grad()
            loss.backward()
            q_opt.step()
            with torch.no_grad():
                for t, s in zip(list(targets.parameters()) + (list(enc_t.parameters()) if enc else []),
                                list(critics.parameters()) + (list(enc.parameters()) if enc else [])):
                    t.lerp_(s, 0.005)
        f = feats(batches[-1]["obs"], enc).detach()
        a, logp = actor(f)
        pi_loss = (log_alpha.exp().detach() * logp - q(critics, f, a).mean(0)).mean()
        pi_opt.zero_grad()
        pi_loss.backward()
        pi_opt.step()
        a_loss = -(log_alpha * (logp.detach() - ACT / 2)).mean()
        a_opt.zero_grad()
        a_loss.backward()
        a_opt.step()

    return _time(update, seconds)


def run_torchrl(obs: str, seconds: float) -> float:
    import torch
    from tensordict import TensorDict
    from tensordict.nn import NormalParamExtractor, TensorDictModule
    from torch import nn
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
    from torchrl.objectives import SACLoss, SoftUpdate

    if obs != "state":
        raise SystemExit("torchrl: state only in this benchmark")
    net = nn.Sequential(MLP(in_features=STATE, out_features=2 * ACT, num_cells=[HIDDEN, HIDDEN]), NormalParamExtractor())
    actor = ProbabilisticActor(TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
                               in_keys=["loc", "scale"], distribution_class=TanhNormal, return_log_prob=True)
    qnet = MLP(in_features=STATE + ACT, out_features=1, num_cells=[HIDDEN, HIDDEN], norm_class=nn.LayerNorm,
               norm_kwargs={"normalized_shape": HIDDEN})
    qvalue = ValueOperator(qnet, in_keys=["observation", "action"])
    loss = SACLoss(actor, qvalue, num_qvalue_nets=E, target_entropy=-ACT / 2)
    updater = SoftUpdate(loss, tau=0.005)
    q_params = list(loss.qvalue_network_params.flatten_keys().values())
    pi_params = list(loss.actor_network_params.flatten_keys().values())
    q_opt = torch.optim.Adam(q_params, lr=3e-4)
    pi_opt = torch.optim.Adam(pi_params, lr=3e-4)
    a_opt = torch.optim.Adam([loss.log_alpha], lr=3e-4)
    tds = [TensorDict({"observation": torch.randn(B, STATE), "action": torch.rand(B, ACT) * 2 - 1,
                       ("next", "observation"): torch.randn(B, STATE), ("next", "reward"): torch.randn(B, 1),
                       ("next", "done"): torch.zeros(B, 1, dtype=torch.bool),
                       ("next", "terminated"): torch.zeros(B, 1, dtype=torch.bool)}, batch_size=[B]) for _ in range(G)]

    def update():
        for td in tds:
            out = loss(td)
            q_opt.zero_grad()
            out["loss_qvalue"].backward()
            q_opt.step()
            updater.step()
        out = loss(tds[-1])
        pi_opt.zero_grad()
        a_opt.zero_grad()
        (out["loss_actor"] + out["loss_alpha"]).backward()
        pi_opt.step()
        a_opt.step()

    return _time(update, seconds)


def run_lerobot(obs: str, seconds: float, compile: bool = True) -> float:
    """LeRobot 0.3.3's SACPolicy, driven the way its learner (lerobot/scripts/rl/learner.py) drives it:
    per critic step a critic loss, grad-norm clip (40), Adam step and target update; then one actor
    and one temperature step. Its critics are a Python loop over E heads behind a shared state
    encoder (Linear + LayerNorm + tanh, 256), compiled with torch.compile as it ships
    (``use_torch_compile=True``); its target evaluates all E target critics, then subsamples Z."""
    import importlib.machinery
    import types

    import torch

    if obs != "state":
        raise SystemExit("lerobot: state only in this benchmark")
    # Its dataset utilities import torchvision at module load; SAC never uses it, and no
    # torchvision build matches the CPU torch used here, so an empty module stands in.
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2"):
        stub = sys.modules[name] = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        stub.__getattr__ = _placeholder  # type: ignore[attr-defined]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
    sys.modules["torchvision.transforms"].v2 = sys.modules["torchvision.transforms.v2"]  # type: ignore[attr-defined]
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.sac.configuration_sac import SACConfig as LRSACConfig
    from lerobot.policies.sac.modeling_sac import SACPolicy

    cfg = LRSACConfig(
        input_features={"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE,))},
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACT,))},
        dataset_stats={"observation.state": {"min": [-1.0] * STATE, "max": [1.0] * STATE},
                       "action": {"min": [-1.0] * ACT, "max": [1.0] * ACT}},
        num_critics=E, num_subsample_critics=Z, utd_ratio=G, target_entropy=-ACT / 2, use_torch_compile=compile)
    policy = SACPolicy(cfg)
    clip = cfg.grad_clip_norm
    q_opt = torch.optim.Adam(policy.critic_ensemble.parameters(), lr=3e-4)
    pi_opt = torch.optim.Adam([p for n, p in policy.actor.named_parameters() if not n.startswith("encoder")], lr=3e-4)
    a_opt = torch.optim.Adam([policy.log_alpha], lr=3e-4)
    batches = [{"action": torch.rand(B, ACT) * 2 - 1, "reward": torch.randn(B), "done": torch.zeros(B),
                "state": {"observation.state": torch.randn(B, STATE)},
                "next_state": {"observation.state": torch.randn(B, STATE)}} for _ in range(G)]

    def update():
        for batch in batches:
            loss = policy.forward(batch, model="critic")["loss_critic"]
            q_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.critic_ensemble.parameters(), max_norm=clip)
            q_opt.step()
            policy.update_target_networks()
        loss = policy.forward(batches[-1], model="actor")["loss_actor"]
        pi_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.actor.parameters(), max_norm=clip)
        pi_opt.step()
        loss = policy.forward(batches[-1], model="temperature")["loss_temperature"]
        a_opt.zero_grad()
        loss.backward()
        a_opt.step()
        policy.update_temperature()

    return _time(update, seconds)


def _placeholder(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})


def _time(fn, seconds: float) -> float:
    import torch

    torch.manual_seed(0)
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--peer-python", help="python of a venv with torchrl installed")
    p.add_argument("--lerobot-python", help="python of a venv with lerobot==0.3.3 installed")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "OBS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        impl, obs = args.one
        print(json.dumps({"rate": {"vlarl": run_vlarl,
                                      "vlarl_compiled": lambda o, s: run_vlarl(o, s, compile=True),
                                      "vlarl_compiled_bf16": lambda o, s: run_vlarl(o, s, True, "bfloat16"),
                                      "plain_loop": run_plain, "torchrl": run_torchrl, "lerobot": run_lerobot,
                                      "lerobot_eager": lambda o, s: run_lerobot(o, s, compile=False)}[impl](obs, args.seconds)}))
        return
    ours = ["vlarl", "vlarl_compiled", "vlarl_compiled_bf16"]
    cases = [(impl, "state", sys.executable) for impl in ours] + [("plain_loop", "state", sys.executable)]
    cases += [(impl, "pixels", sys.executable) for impl in ours] + [("plain_loop", "pixels", sys.executable)]
    if args.peer_python:
        cases.insert(4, ("torchrl", "state", args.peer_python))
    if args.lerobot_python:
        cases[4:4] = [("lerobot", "state", args.lerobot_python), ("lerobot_eager", "state", args.lerobot_python)]
    rates: dict[str, list[float]] = {}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    for r in range(args.rounds):
        for impl, obs, python in cases:
            proc = subprocess.run([python, __file__, "--one", impl, obs, "--seconds", str(args.seconds)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{impl}/{obs} failed: {proc.stderr[-500:]}", flush=True)
                continue
            rate = json.loads(proc.stdout.strip().splitlines()[-1])["rate"]
            rates.setdefault(f"{impl}/{obs}", []).append(rate)
            print(f"round {r} {impl:10s} {obs:6s} {rate:.3f} updates/s", flush=True)
    write(rates, args)


NOTES = {
    "vlarl": "stacked-weight ensemble, eager, float32",
    "vlarl_compiled": "the same with torch.compile on the critic loss (float32)",
    "vlarl_compiled_bf16": "compiled, the critics' hidden x hidden products (and, with pixels, the conv "
                           "encoder under autocast) in bfloat16; fp32 weights, accumulation, LayerNorm and Q outputs",
    "plain_loop": "the same maths, E separate critic networks in a Python loop, eager float32",
    "torchrl": "torchrl 0.14.1 SACLoss (vmapped critics, float32); target min over all E critics, actor and "
               "alpha losses computed on every critic step",
    "lerobot": "LeRobot 0.3.3 SACPolicy as shipped (torch.compile on its critics, float32); Python loop over "
               "critics, target over all E then Z subsampled, grad-norm clipping, extra state-encoder layer",
    "lerobot_eager": "LeRobot 0.3.3 SACPolicy with use_torch_compile=False",
}


def write(rates: dict[str, list[float]], args) -> None:
    from vlarl.data.replay import ReplayBuffer

    med = {k: statistics.median(v) for k, v in rates.items()}
    ours = {k: v for k, v in med.items() if k.startswith("vlarl")}
    peers = {k: v for k, v in med.items() if not k.startswith("vlarl")}
    best, best_fp32, eager = {}, {}, {}
    for obs in ("state", "pixels"):
        theirs = max((v for k, v in peers.items() if k.endswith("/" + obs)), default=None)
        mine = {k: v for k, v in ours.items() if k.endswith("/" + obs)}
        if theirs and mine:
            top = max(mine, key=mine.get)
            top32 = max((k for k in mine if "bf16" not in k), key=mine.get)
            best[obs] = {"vlarl": top.split("/")[0], "speedup": mine[top] / theirs}
            best_fp32[obs] = {"vlarl": top32.split("/")[0], "speedup": mine[top32] / theirs}
            if f"vlarl/{obs}" in mine:
                eager[obs] = mine[f"vlarl/{obs}"] / theirs
    buf = ReplayBuffer(10_000, 4, ACT, {"corner": (84, 84, 3)})
    doc = {
        "command": "python " + " ".join(sys.argv),
        "unit": f"one update = {G} critic steps (batch {B}) + 1 actor step + 1 temperature step; E={E}, Z={Z}",
        "implementations": NOTES,
        "updates_per_s_median": med,
        "updates_per_s_rounds": rates,
        "peers": {k: {"updates_per_s": v, "best_vlarl_speedup": ours.get(
            f"{best.get(k.split('/')[1], {}).get('vlarl')}/{k.split('/')[1]}", float("nan")) / v}
            for k, v in peers.items()},
        "speedup_vs_best_peer": min(b["speedup"] for b in best.values()) if best else None,
        "speedup_vs_best_peer_per_obs": best,
        "speedup_vs_best_peer_float32": min(b["speedup"] for b in best_fp32.values()) if best_fp32 else None,
        "speedup_vs_best_peer_float32_per_obs": best_fp32,
        "speedup_vs_best_peer_eager_float32": min(eager.values()) if eager else None,
        "replay_bytes_ratio": buf.nbytes / buf.capacity / (84 * 84 * 3),
        "not_measured": {"torchrl/pixels": "torchrl measured on state only",
                         "lerobot/pixels": "LeRobot measured on state only (its image encoder differs from ours)"},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "learner_throughput.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# SAC/RLPD learner throughput", "", f"`{doc['command']}` on {doc['machine']}. {doc['unit']}.", "",
             "| implementation | obs | updates/s (median) | best vlarl / this |", "|---|---|---|---|"]
    for k, v in med.items():
        impl, obs = k.split("/")
        top = best.get(obs, {}).get("vlarl", "vlarl")
        lines.append(f"| {impl} | {obs} | {v:.3f} | {ours.get(f'{top}/{obs}', float('nan')) / v:.2f}x |")
    lines += ["", f"Speed-up over the best peer: {doc['speedup_vs_best_peer']:.2f}x with bfloat16 allowed, "
              f"{doc['speedup_vs_best_peer_float32']:.2f}x in float32, "
              f"{doc['speedup_vs_best_peer_eager_float32']:.2f}x eager float32 (worst case over state and pixels).",
              "", f"Replay bytes per 84 px pixel transition / one uint8 image: {doc['replay_bytes_ratio']:.3f}", ""]
    lines += [f"- **{k}**: {v}" for k, v in NOTES.items() if any(m.startswith(k + "/") for m in med)]
    (RESULTS / "learner_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
