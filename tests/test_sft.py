import json

import numpy as np
import pytest
import torch

from vlarl.cli import main
from vlarl.data.augment import random_shift
from vlarl.eval.evaluate import evaluate
from vlarl.models.policy import PolicyConfig
from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
from vlarl.recipes.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def toy_demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "demos"
    collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="pixels", image_size=32), episodes=40, noise=0.1,
                          out=str(out)), progress=False)
    return str(out)


def test_evaluate_counts_success_and_length_exactly():
    def oracle(obs, _):
        return np.clip((obs["state"][:, 2:] - obs["state"][:, :2]) / 0.1, -1, 1).astype(np.float32)

    def still(obs, _):
        return np.zeros((len(obs["state"]), 2), np.float32)

    good = evaluate(oracle, "toy/reach", 7, num_envs=2, env_options={"obs_mode": "state"})
    assert good["episodes"] == 7 and good["success_rate"] == 1.0
    assert [r["env_index"] for r in good["records"]].count(0) == 4  # worker 0 runs episodes 0, 2, 4, 6
    bad = evaluate(still, "toy/reach", 3, num_envs=1, env_options={"obs_mode": "state", "episode_length": 6})
    assert bad["success_rate"] == 0.0 and bad["mean_length"] == 6.0
    assert bad["ci95"][1] == pytest.approx(0.5615, abs=1e-3)


def test_random_shift_moves_content_within_pad():
    img = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    img[:, 8, 8] = 255
    out = random_shift(img, 2, torch.Generator().manual_seed(0))
    assert out.shape == img.shape and out.dtype == torch.uint8
    for i in range(2):
        r, c = (out[i, ..., 0] == 255).nonzero()[0].tolist()
        assert abs(r - 8) <= 2 and abs(c - 8) <= 2


@pytest.mark.slow
def test_sft_learns_the_toy_task(toy_demos, tmp_path):
    cfg = SFTConfig(datasets=[toy_demos], policy=PolicyConfig(encoder="conv", dim=64, layers=1), steps=600,
                    batch_size=64, lr=1e-3, eval_episodes=20, eval_envs=1, save_every=300, log_every=100,
                    run_dir=str(tmp_path / "run"))
    results = train_sft(cfg, progress=False)
    assert results["mean_success"] >= 0.7, results  # an untrained policy scores ~0 (see below)
    assert not results["cached_features"]  # a trainable encoder runs live, with augmentation
    assert (tmp_path / "run" / "training.png").exists() and (tmp_path / "run" / "eval.md").exists()

    # The same run evaluated from its checkpoint by `vlarl eval` gives a comparable success.
    assert main(["eval", str(tmp_path / "run"), "--episodes", "10", "--envs", "2", "--videos", "1"]) == 0
    summary = json.loads((tmp_path / "run" / "eval_final" / "results.json").read_text())
    assert summary["per_task"]["toy/reach"]["success_rate"] >= 0.6
    assert (tmp_path / "run" / "eval_final" / "toy_reach.mp4").exists()

    untrained = SFTConfig(datasets=[toy_demos], policy=PolicyConfig(encoder="conv", dim=64, layers=1), steps=1,
                          eval_episodes=20, eval_envs=1, run_dir=str(tmp_path / "untrained"))
    assert train_sft(untrained, progress=False)["mean_success"] <= 0.2


def test_frozen_encoder_features_are_cached(toy_demos, tmp_path):
    cfg = SFTConfig(datasets=[toy_demos], policy=PolicyConfig(dim=32, layers=1, head="tokens", chunk=2), steps=20,
                    batch_size=32, eval_episodes=2, eval_envs=1, measure_cache_speedup=True, save_every=10,
                    run_dir=str(tmp_path / "cached"))
    results = train_sft(cfg, progress=False)
    assert results["cached_features"] and results["cached_speedup"] > 1.5


def test_sft_resume_continues_from_checkpoint(toy_demos, tmp_path):
    run = tmp_path / "r"
    small = [f"datasets=[{toy_demos}]", "policy.encoder=conv", "policy.dim=32", "policy.layers=1",
             "eval_episodes=1", "eval_envs=1", "save_every=10", "log_every=5", f"run_dir={run}"]
    assert main(["train", "sft", "steps=10", *small]) == 0
    assert main(["train", "sft", "--resume", str(run), "steps=20"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps][:4] == [5, 10, 10, 15]  # losses at 5 and 10, eval at 10, then resumed
    assert max(steps) == 20


def test_eval_errors_are_clear(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_mismatched_checkpoint_is_a_clear_error(toy_demos, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = SFTConfig(datasets=[toy_demos], policy=PolicyConfig(encoder="conv", dim=32, layers=1), steps=2,
                    eval_episodes=1, eval_envs=1, save_every=2, run_dir=str(run))
    train_sft(cfg, progress=False)
    spec = json.loads((run / "policy.json").read_text())
    spec["policy"]["dim"] = 64  # the architecture no longer matches the saved weights
    (run / "policy.json").write_text(json.dumps(spec))
    assert main(["eval", str(run), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "policy.safetensors: cannot load into policy" in err and "size mismatch" in err


def test_sft_fine_tunes_a_finished_run_and_names_a_mismatch(toy_demos, tmp_path):
    from vlarl.errors import VlarlError
    from vlarl.recipes.sft import load_sft_policy

    def cfg(name, **kw):
        base = dict(datasets=[toy_demos], episodes_per_dataset=4, policy=PolicyConfig(encoder="conv", dim=32, layers=1),
                    steps=5, batch_size=16, eval_episodes=1, eval_envs=1, video_episodes=0, save_every=5,
                    run_dir=str(tmp_path / name))
        return SFTConfig(**(base | kw))

    train_sft(cfg("base", steps=20, lr=1e-3), progress=False)
    # lr 0: the fine-tuned run must hold the base run's weights exactly (a fresh init would not)
    train_sft(cfg("tuned", init_run=str(tmp_path / "base"), lr=0.0, weight_decay=0.0), progress=False)
    fresh = train_sft(cfg("fresh", lr=0.0, weight_decay=0.0, seed=1), progress=False)
    base, _ = load_sft_policy(tmp_path / "base", torch.device("cpu"))
    tuned, _ = load_sft_policy(tmp_path / "tuned", torch.device("cpu"))
    other, _ = load_sft_policy(tmp_path / "fresh", torch.device("cpu"))
    for (name, a), b, c in zip(base.state_dict().items(), tuned.state_dict().values(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert fresh["steps"] == 5 and any(not torch.equal(a, c) for a, c in zip(base.state_dict().values(),
                                                                                 other.state_dict().values()))
    with pytest.raises(VlarlError, match="init_run: .* has policy"):
        train_sft(cfg("bad", init_run=str(tmp_path / "base"), policy=PolicyConfig(encoder="conv", dim=48, layers=1)),
                  progress=False)
