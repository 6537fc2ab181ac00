"""iRe-VLA: the freeze invariant of the RL stage, the stage plan, resume, and one tiny
iteration on the toy task that raises success."""

import json

import pytest
import torch

from vlarl.algos.ppo import PPOConfig
from vlarl.cli import main
from vlarl.data import EpisodeDataset
from vlarl.errors import VlarlError
from vlarl.models.groups import named_group_params
from vlarl.models.policy import PolicyConfig
from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
from vlarl.recipes.ire_vla import (IReVLAConfig, RLStageConfig, SLStageConfig, check_frozen, frozen_snapshot,
                                   rl_stage, sample_frames, stage_plan, train_ire_vla)
from vlarl.recipes.sft import SFTConfig, build_policy, train_sft
from vlarl.runtime import latest_checkpoint, load_checkpoint

# The goal is in the state as well as the image, so a small policy is not limited by what
# its encoder sees and the test measures the learning rule.
TOY = dict(name="toy/reach", obs_mode="state+pixels", image_size=32)


@pytest.fixture(scope="module")
def toy_demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("ire") / "demos"
    collect(CollectConfig(env=EnvConfig(**TOY), episodes=5, noise=0.1, out=str(out)), progress=False)
    return str(out)


def _sft_cfg(demos: str, **kw) -> SFTConfig:
    return SFTConfig(datasets=[demos], policy=PolicyConfig(encoder="conv", dim=64, layers=1), steps=300, batch_size=64,
                     lr=1e-3, eval_episodes=20, eval_envs=1, video_episodes=0, **kw)


@pytest.fixture(scope="module")
def toy_sft(toy_demos, tmp_path_factory):
    """Stage 0, shared by the tests below: a weak SFT policy (5 demos, 300 steps)."""
    run_dir = tmp_path_factory.mktemp("ire") / "sft"
    train_sft(_sft_cfg(toy_demos, run_dir=str(run_dir)), progress=False)
    return run_dir


def _cfg(demos: str, run_dir, **kw) -> IReVLAConfig:
    base = dict(sft=_sft_cfg(demos),
                rl=RLStageConfig(steps=6000, num_envs=2, rollout_steps=256, ppo=PPOConfig(lr=1e-3, init_log_std=-0.7)),
                sl=SLStageConfig(steps=300, lr=1e-3), eval_episodes=20, eval_envs=1, video_episodes=0,
                run_dir=str(run_dir))
    base.update(kw)
    return IReVLAConfig(**base)


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute alone; slower beside other jobs
def test_one_iteration_raises_success_on_toy(toy_demos, toy_sft, tmp_path):
    run_dir = tmp_path / "run"
    r = train_ire_vla(_cfg(toy_demos, run_dir, sft_run=str(toy_sft)), progress=False)
    task = r["per_task"]["toy/reach"]
    assert task["after"] >= task["before"] + 0.15, task
    [rl, sl] = r["stages"]
    # the RL stage itself learns: its rollouts succeed more often at the end than at the start
    curve = [row["rollout_success"] for row in json.loads((run_dir / "rl_curve_stage01.json").read_text())]
    assert sum(curve[-3:]) / 3 >= sum(curve[:3]) / 3 + 0.1, curve
    assert rl["kind"] == "rl" and sl["kind"] == "sl"
    assert rl["freeze_check"]["bit_identical"] and rl["freeze_check"]["frozen_by_group"]["adapter"] > 0
    # D_RL holds successful RL episodes only, and its size relative to D_e is logged
    d_rl = EpisodeDataset(run_dir / "d_rl" / "stage-01")
    assert len(d_rl) == rl["d_rl_episodes"] > 0 and all(e.success and e.source == "policy" for e in d_rl.episodes)
    assert sl["d_rl_ratio"] == pytest.approx(len(d_rl) / 5)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("sl/d_rl_ratio" in row for row in rows) and any("rl/rollout_success" in row for row in rows)
    assert (run_dir / "results.md").exists()


def _toy_policy(sft_dir):
    spec = json.loads((sft_dir / "policy.json").read_text())
    policy = build_policy(spec)
    load_checkpoint(latest_checkpoint(sft_dir / "checkpoints"), {"policy": policy}, restore_rng=False)
    return policy, spec


def _rl(policy, spec, tmp_path, whole_model: bool, lr: float = 1e-3, steps: int = 512):
    from vlarl.models.language import InstructionEncoder

    task = next(iter(spec["tasks"].values()))
    instruction = next(iter(spec["tasks"]))
    cfg = _cfg("unused", tmp_path, rl=RLStageConfig(steps=steps, num_envs=2, rollout_steps=256,
                                                       ppo=PPOConfig(lr=lr, init_log_std=-0.7)))
    specs = [(task["env"], {**task["options"], "reward": "sparse"})] * 2
    return rl_stage(policy, {instruction: InstructionEncoder()([instruction])}, specs, cfg, whole_model,
                    tmp_path / "d_rl", seed=0, device=torch.device("cpu"), log=lambda *a, **k: None, progress=False)


def test_rl_stage_keeps_backbone_and_adapter_bit_identical(toy_sft, tmp_path):
    policy, spec = _toy_policy(toy_sft)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    stats = _rl(policy, spec, tmp_path, whole_model=False)
    for group in ("backbone", "adapter"):
        for name, p in named_group_params(policy, group):
            assert torch.equal(p, before[name]), name
            assert p.grad is None and not p.requires_grad, name
    assert any(not torch.equal(p, before[n]) for n, p in named_group_params(policy, "head"))
    assert stats["freeze_check"] == {"bit_identical": True, "no_grad": True, "frozen_tensors": stats["freeze_check"]
                                     ["frozen_tensors"], "frozen_by_group": stats["freeze_check"]["frozen_by_group"]}


def test_freeze_check_catches_a_change_or_a_gradient(toy_sft):
    policy, _ = _toy_policy(toy_sft)
    policy.requires_grad_(False)
    for _, p in named_group_params(policy, "head"):
        p.requires_grad_(True)
    snap = frozen_snapshot(policy)
    name, p = next(named_group_params(policy, "adapter"))
    with torch.no_grad():
        p.view(-1)[0] += 1e-7
    with pytest.raises(VlarlError, match="changed"):
        check_frozen(policy, snap)
    with torch.no_grad():
        p.copy_(snap[name])
    p.grad = torch.zeros_like(p)
    with pytest.raises(VlarlError, match="with gradients"):
        check_frozen(policy, snap)


def test_whole_model_ppo_moves_the_adapter_but_not_the_backbone(toy_sft, tmp_path):
    policy, spec = _toy_policy(toy_sft)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    stats = _rl(policy, spec, tmp_path, whole_model=True)
    assert all(torch.equal(p, before[n]) for n, p in named_group_params(policy, "backbone"))
    assert any(not torch.equal(p, before[n]) for n, p in named_group_params(policy, "adapter"))
    assert set(stats["freeze_check"]["frozen_by_group"]) == {"backbone"}


def test_stage_plan_and_bad_settings(toy_demos, tmp_path):
    envs = ["metaworld/a", "metaworld/b"]
    assert stage_plan(IReVLAConfig(iterations=2), envs) == [
        ("rl", ["metaworld/a"]), ("sl", ["metaworld/a"]), ("rl", ["metaworld/b"]), ("sl", ["metaworld/b"])] * 2
    assert stage_plan(IReVLAConfig(mode="whole-model-ppo", tasks=["metaworld/a,metaworld/b"]), envs) == [
        ("rl", ["metaworld/a", "metaworld/b"])]
    with pytest.raises(VlarlError, match="metaworld/c"):
        stage_plan(IReVLAConfig(tasks=["metaworld/c"]), envs)
    with pytest.raises(VlarlError, match="mode"):
        train_ire_vla(_cfg(toy_demos, tmp_path / "bad", mode="ppo"), progress=False)


def test_resume_runs_only_the_new_stages(toy_sft, toy_demos, tmp_path):
    cfg = tmp_path / "ire.yaml"
    cfg.write_text(f"sft_run: {toy_sft}\nsft: {{datasets: [{toy_demos}]}}\nrl: {{steps: 256, rollout_steps: 128}}\n"
                   f"sl: {{steps: 5}}\neval_episodes: 4\neval_envs: 1\nvideo_episodes: 0\nrun_dir: {tmp_path / 'run'}\n")
    assert main(["train", "ire-vla", "--config", str(cfg)]) == 0
    first = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [s["stage"] for s in first["stages"]] == [1, 2]
    assert main(["train", "ire-vla", "--resume", str(tmp_path / "run"), "iterations=2"]) == 0
    second = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [s["stage"] for s in second["stages"]] == [1, 2, 3, 4]
    assert second["stages"][:2] == first["stages"]  # the finished stages were not rerun
    assert second["d_rl_ratio"][0] == first["d_rl_ratio"][0]
    # the first pass's RL curve is still in the log after the resume, and steps only grow
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl_steps = [row["step"] for row in rows if "rl/rollout_success" in row]
    assert rl_steps[0] == 256 and len(rl_steps) == 2 and rl_steps == sorted(rl_steps)


def test_balanced_sampling_draws_tasks_equally():
    import numpy as np

    task_of_frame = torch.tensor([0] * 90 + [2] * 10)  # task 1 has no frames
    rng = np.random.default_rng(0)
    idx = sample_frames(task_of_frame, 4000, rng, balance_tasks=True)
    share = (task_of_frame[idx] == 2).float().mean().item()
    assert 0.45 < share < 0.55  # frames alone would give 0.10
    assert set(idx[task_of_frame[idx] == 2].tolist()) == set(range(90, 100))
    plain = sample_frames(task_of_frame, 4000, rng, balance_tasks=False)
    assert 0.07 < (task_of_frame[plain] == 2).float().mean().item() < 0.13
