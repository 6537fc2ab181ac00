"""Data-parallel learners on CPU with gloo: gradients of 2 processes, each on half of a batch
and averaged, equal the single-process gradients on the whole batch (SFT's BC loss, SAC's
critic); the SAC learner hands every gradient to its sync hook; a 2-process SFT run under
torchrun ends with the single-process run's weights; rank 0's minibatches reach each process
as its slice; RLPD and ConRFT (the HIL-SERL runtime) run under torchrun with replicas that
stay identical, and resume."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import sys, torch
    from vlarl.runtime import distributed
    from vlarl.algos.bc import bc_loss
    from vlarl.algos.sac import SACAgent, SACConfig
    from vlarl.models.policy import PolicyConfig, VLAPolicy

    out = sys.argv[1]
    ctx = distributed.init_from_env(torch.device("cpu"))
    torch.manual_seed(0)
    policy = VLAPolicy(PolicyConfig(encoder="conv", dim=32, layers=1), ["top"], 32, 2, 2)
    g = torch.Generator().manual_seed(1)
    B = 8
    pixels = {"top": torch.randint(0, 255, (B, 32, 32, 3), generator=g, dtype=torch.uint8)}
    state, lang, actions = torch.randn(B, 2, generator=g), torch.randn(B, 384, generator=g), torch.rand(B, 1, 2, generator=g) * 2 - 1
    idx = distributed.shard(torch.arange(B), ctx)
    loss = bc_loss(policy, policy.encode_images({"top": pixels["top"][idx]}), state[idx], lang[idx], actions[idx])
    loss.backward()
    distributed.average_gradients(policy.parameters(), ctx)
    sft = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    torch.manual_seed(0)
    agent = SACAgent(SACConfig(ensemble=2, subset=2), 4, 2)
    obs, act = torch.randn(B, 4, generator=g), torch.rand(B, 2, generator=g) * 2 - 1
    target = torch.randn(B, generator=g)  # the TD targets, fixed: their sampling is not what is tested
    q = agent.critic(agent.critic.features({"state": obs[idx]}), act[idx])  # (E, B/N)
    ((q - target[idx]) ** 2).mean().backward()
    distributed.average_gradients(agent.critic.parameters(), ctx)
    sac = {n: p.grad.clone() for n, p in agent.critic.named_parameters() if p.grad is not None}
    torch.save({"sft": sft, "sac": sac, "loss": float(loss)}, f"{out}/rank{ctx.rank}_of{ctx.world_size}.pt")
    distributed.shutdown()  # without it gloo's threads sometimes abort the exit
''')


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, world, out, tmp_path):
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(out)],
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    for p in procs:
        output = p.communicate(timeout=240)[0].decode()
        assert p.returncode == 0, output[-3000:]


@pytest.mark.timeout(300)
def test_two_processes_average_to_the_single_process_gradient(tmp_path):
    script = tmp_path / "grads.py"
    script.write_text(SCRIPT)
    _launch(script, 1, tmp_path, tmp_path)
    _launch(script, 2, tmp_path, tmp_path)
    single = torch.load(tmp_path / "rank0_of1.pt")
    ranks = [torch.load(tmp_path / f"rank{r}_of2.pt") for r in range(2)]
    for kind in ("sft", "sac"):
        assert set(ranks[0][kind]) == set(single[kind]) and len(single[kind]) > 4
        for name, grad in single[kind].items():
            torch.testing.assert_close(ranks[0][kind][name], grad, rtol=1e-5, atol=1e-6, msg=f"{kind} {name}")
            assert torch.equal(ranks[0][kind][name], ranks[1][kind][name])  # every process steps the same way
    assert ranks[0]["loss"] != ranks[1]["loss"]  # each held a different half of the batch


def test_sac_learner_hands_every_gradient_to_its_sync_hook():
    from vlarl.algos.sac import SACAgent, SACConfig, SACLearner

    torch.manual_seed(0)
    agent = SACAgent(SACConfig(ensemble=2, subset=2), 4, 2)
    learner = SACLearner(agent)
    seen = []
    learner.grad_sync = lambda params: seen.append([p for p in params])
    batch = {"obs": {"state": torch.randn(8, 4)}, "next_obs": {"state": torch.randn(8, 4)},
             "action": torch.rand(8, 2) * 2 - 1, "reward": torch.randn(8), "terminated": torch.zeros(8)}
    learner.update([batch, batch], update_actor=True)
    critic, actor = list(agent.critic.parameters()), list(agent.actor.parameters())
    assert len(seen) == 4  # 2 critic steps, the actor, the temperature
    assert all(p.grad is not None for p in seen[0]) and {id(p) for p in seen[0]} == {id(p) for p in critic}
    assert {id(p) for p in seen[2]} == {id(p) for p in actor} and seen[3] == [agent.log_alpha]


@pytest.mark.timeout(600)
def test_sft_under_torchrun_ddp_and_fsdp_with_two_processes_end_where_one_process_does(tmp_path):
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect

    demos = tmp_path / "demos"
    collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="pixels", image_size=32), episodes=6, noise=0.1,
                          out=str(demos)), progress=False)
    common = [f"datasets=[{demos}]", "policy.encoder=conv", "policy.dim=32", "policy.layers=1", "steps=12",
              "batch_size=16", "augment=false", "eval_episodes=1", "eval_envs=1", "save_every=6", "log_every=6",
              "video_episodes=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "vlarl", "train", "sft", *common, f"run_dir={tmp_path / 'one'}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "vlarl",
                          "train", "sft", *common, f"run_dir={tmp_path / 'two'}"],
                         env=env, capture_output=True, text=True, timeout=400)
    assert two.returncode == 0, two.stderr[-3000:]
    from safetensors.torch import load_file

    from vlarl.runtime import latest_checkpoint

    w1 = load_file(latest_checkpoint(tmp_path / "one" / "checkpoints") / "policy.safetensors")
    w2 = load_file(latest_checkpoint(tmp_path / "two" / "checkpoints") / "policy.safetensors")
    assert set(w1) == set(w2)
    # Equal up to float summation order, which Adam amplifies only where the true gradient is
    # 0 (a key bias under softmax): 2.5e-5 there, < 2e-6 elsewhere; 12 steps move weights ~1e-3.
    moved = max((w1[k] - load_file(latest_checkpoint(tmp_path / "one" / "checkpoints").parent / "step_000000006"
                                   / "policy.safetensors")[k]).abs().max().item() for k in w1)
    assert moved > 1e-3
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-4, msg=k)
    assert json.loads((tmp_path / "two" / "results.json").read_text())["steps"] == 12
    assert not (tmp_path / "two" / "rank1").exists()

    # FSDP: the encoder and trunk blocks sharded over the 2 processes; stopped at step 6 and
    # resumed (weights whole, optimiser state whole and keyed by name), it ends where one process does.
    fsdp = tmp_path / "fsdp"
    _torchrun(["train", "sft", *[c for c in common if not c.startswith("steps=")], "steps=6", "parallel=fsdp",
               f"run_dir={fsdp}"], tmp_path)
    _torchrun(["train", "sft", "--resume", str(fsdp), "steps=12"], tmp_path)
    from vlarl.runtime.statefile import load_state

    state = load_state(latest_checkpoint(fsdp / "checkpoints") / "state.json")
    assert any(k.startswith("trunk.blocks.") for k in state["optimizers"]["opt"]["state"])  # Adam moments, by name
    w3 = load_file(latest_checkpoint(fsdp / "checkpoints") / "policy.safetensors")
    assert set(w3) == set(w1)
    for k in w1:
        torch.testing.assert_close(w3[k], w1[k], rtol=0, atol=1e-4, msg=k)
    assert json.loads((fsdp / "results.json").read_text())["resumed_from"] == 6


SCATTER = textwrap.dedent('''
    import sys, torch
    from vlarl.runtime import distributed

    ctx = distributed.init_from_env(torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    batches = [{"obs": {"state": torch.randn(8, 3, generator=g),
                        "pixels": {"top": torch.randint(0, 255, (8, 4, 4, 3), generator=g, dtype=torch.uint8)}},
                "terminated": torch.rand(8, generator=g) > 0.5, "reward": torch.randn(8, generator=g)}
               for _ in range(2)]
    mine = distributed.scatter_batches(batches if ctx.is_main else None, ctx)
    torch.save({"sent": batches, "got": mine}, f"{sys.argv[1]}/scatter_rank{ctx.rank}.pt")
    distributed.shutdown()
''')


@pytest.mark.timeout(300)
def test_scatter_gives_each_process_its_slice_of_rank0s_minibatches(tmp_path):
    script = tmp_path / "scatter.py"
    script.write_text(SCATTER)
    _launch(script, 2, tmp_path, tmp_path)
    sent = torch.load(tmp_path / "scatter_rank0.pt")["sent"]
    for rank in range(2):
        got = torch.load(tmp_path / f"scatter_rank{rank}.pt")["got"]
        assert len(got) == 2
        for g in range(2):
            for path in (("obs", "state"), ("obs", "pixels", "top"), ("terminated",), ("reward",)):
                a, b = sent[g], got[g]
                for key in path:
                    a, b = a[key], b[key]
                assert b.dtype == a.dtype and torch.equal(b, a.chunk(2)[rank]), (rank, g, path)


def _torchrun(args, tmp_path, timeout=300):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "vlarl",
                           *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.timeout(600)
def test_rlpd_under_torchrun_keeps_replicas_equal_and_resumes(tmp_path):
    run_dir = tmp_path / "rlpd"
    common = ["env.name=toy/reach", "random_steps=50", "sac.batch_size=32", "sac.utd=2", "eval_every=0",
              "save_every=100", "log_every=50", f"run_dir={run_dir}"]
    _torchrun(["train", "rlpd", "steps=200", *common], tmp_path)
    first = json.loads((run_dir / "results.json").read_text())
    assert first["steps"] == 200 and first["replica_gap"] == 0.0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("critic_loss" in r for r in rows)  # updates ran (on both processes: the gap stays 0)
    _torchrun(["train", "rlpd", "--resume", str(run_dir), "steps=300"], tmp_path)
    second = json.loads((run_dir / "results.json").read_text())
    assert second["resumed_from"] == 200 and second["steps"] == 300 and second["replica_gap"] == 0.0
    assert not (run_dir / "rank1").exists()


@pytest.mark.timeout(600)
def test_conrft_under_torchrun_runs_offline_then_online_on_two_processes(tmp_path):
    run_dir = tmp_path / "conrft"
    _torchrun(["train", "conrft", "env.name=toy/reach", "env.obs_mode=state", "env.episode_length=50",
               "runtime=inprocess", "relative_frame=false", "sac.batch_size=64", "sac.utd=1", "video=false", "demos=3",
               "offline_steps=40", "steps=150", "final_eval_episodes=2", "eval_every=0", f"run_dir={run_dir}"], tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["offline"]["updates"] == 40 and results["updates"] > 0 and results["replica_gap"] == 0.0
    assert "summary" in results  # rank 0 finished the ConRFT recipe; the follower returned


@pytest.mark.timeout(300)
def test_an_indivisible_batch_is_refused_by_every_process_before_a_run_starts(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "vlarl",
                           "train", "rlpd", "env.name=toy/reach", "sac.batch_size=33", f"run_dir={tmp_path / 'run'}"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert done.stderr.count("sac.batch_size 33 must be a multiple of the 2 processes") >= 2  # no process waits
    assert not (tmp_path / "run").exists()
