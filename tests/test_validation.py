"""Bad values are refused before anything runs: declared config ranges, datasets checked
against the env they are used with, overrides anywhere on the command line, and damaged
dataset episodes skipped only when asked."""

import dataclasses
import importlib
import json
import pkgutil
import typing
from pathlib import Path

import numpy as np
import pytest

import vlarl
from vlarl.cli import _parse, main
from vlarl.data import EpisodeDataset, EpisodeWriter
from vlarl.errors import ConfigError, DatasetError, VlarlError
from vlarl.ranges import RANGE_KEY
from vlarl.recipes.collect import CollectConfig, EnvConfig, collect
from vlarl.runtime.config import check_ranges, load_config, range_of, save_config


def _fails(argv: list[str], capsys) -> str:
    """Run the real command line; it must exit 2 with one error line, which is returned."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlarl: error: "), err
    return err[0]


# --- declared ranges ----------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "key", "allowed"), [
    (["train", "rlpd", "steps=-5"], "steps", ">= 1"),
    (["train", "rlpd", "save_every=0"], "save_every", ">= 1"),
    (["train", "rlpd", "sac.gamma=1.5"], "sac.gamma", "in (0, 1]"),
    (["train", "rlpd", "sac.offline_ratio=-0.1"], "sac.offline_ratio", "in [0, 1]"),
    (["train", "sft", "batch_size=0"], "batch_size", ">= 1"),
    (["train", "sft", "save_every=0"], "save_every", ">= 1"),
    (["train", "sft", "policy.head=mse"], "policy.head", "one of its choices, got 'mse' (valid: deterministic, gaussian, tokens)"),
    (["train", "hil-serl", "sac.batch_size=0"], "sac.batch_size", ">= 1"),
    (["train", "hil-serl", "weights_every=0"], "weights_every", ">= 1"),
    (["train", "hil-serl", "save_every=0"], "save_every", ">= 1"),
    (["train", "hil-serl", "sim_human.noise=-1"], "sim_human.noise", ">= 0"),
    (["train", "conrft", "conrft.actor_lr=0"], "conrft.actor_lr", "> 0"),
    (["train", "grape", "tpo.beta=0"], "tpo.beta", "> 0"),
    (["train", "ire-vla", "rl.ppo.gae_lambda=2"], "rl.ppo.gae_lambda", "in [0, 1]"),
    (["train", "asap", "sysid.params=[mass,stiffness]"], "sysid.params", "entries must be one of its choices, got 'stiffness'"),
    (["reward-classifier", "train", "holdout=1"], "holdout", "in [0, 1)"),
    (["demo", "collect.episodes=0"], "collect.episodes", ">= 1"),
])
def test_bad_values_are_refused_naming_key_value_and_range(argv, key, allowed, tmp_path, capsys):
    run_dir = tmp_path / "run"
    value = next(a.split("=", 1)[1] for a in argv if a.startswith(key + "="))
    err = _fails([*argv, f"run_dir={run_dir}"], capsys)
    assert f"override '{key}={value}': {key} " in err and allowed in err and "got " in err, err
    assert not run_dir.exists()  # refused before a run directory was made


def test_collect_negative_episodes_writes_nothing(tmp_path, capsys):
    out = tmp_path / "d"
    err = _fails(["collect", "--env", "toy/reach", "--episodes", "-3", "--out", str(out)], capsys)
    assert "override 'episodes=-3': episodes must be >= 1, got -3" in err
    assert not out.exists()


def test_eval_flags_are_checked_too(tmp_path, capsys):
    err = _fails(["eval", str(tmp_path / "no-run"), "--episodes", "-3"], capsys)
    assert "eval: episodes must be >= 1, got -3" in err


def test_all_bad_values_in_one_message_and_the_file_named(tmp_path):
    from vlarl.recipes.rlpd import RLPDConfig

    path = tmp_path / "r.yaml"
    path.write_text("steps: 0\nsac: {batch_size: 0, tau: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(RLPDConfig, path, ["log_every=0"])
    msg = str(err.value)
    assert f"{path}: steps must be >= 1, got 0" in msg and "sac.batch_size must be >= 1, got 0" in msg
    assert "sac.tau must be in (0, 1], got 2.0" in msg and "override 'log_every=0': log_every must be >= 1" in msg


def test_configs_built_in_python_are_checked_before_the_run_directory(tmp_path):
    from vlarl.algos.sac import SACConfig
    from vlarl.recipes.hil_serl import HILSERLConfig, train_hil_serl
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd
    from vlarl.recipes.sft import SFTConfig, train_sft

    cases = [
        (train_rlpd, RLPDConfig(steps=-5, run_dir=str(tmp_path / "a")), "steps must be >= 1, got -5"),
        (train_sft, SFTConfig(batch_size=0, run_dir=str(tmp_path / "b")), "batch_size must be >= 1, got 0"),
        (train_hil_serl, HILSERLConfig(sac=SACConfig(batch_size=0), run_dir=str(tmp_path / "c")),
         "sac.batch_size must be >= 1, got 0"),
        (train_hil_serl, HILSERLConfig(weights_every=0, run_dir=str(tmp_path / "d")), "weights_every must be >= 1"),
        (collect, CollectConfig(episodes=-3, out=str(tmp_path / "e")), "episodes must be >= 1, got -3"),
    ]
    for train, cfg, match in cases:
        with pytest.raises(ConfigError, match=match):
            train(cfg, progress=False)
        assert not Path(cfg.run_dir if hasattr(cfg, "run_dir") else cfg.out).exists()


def test_a_resumed_run_checks_its_overrides(tmp_path):
    from vlarl.recipes.rlpd import RLPDConfig
    from vlarl.runtime import Run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(RLPDConfig(run_dir=str(run_dir)), run_dir / "config.yaml")
    with pytest.raises(ConfigError, match="override 'save_every=0': save_every must be >= 1, got 0"):
        Run.resume(run_dir, RLPDConfig, ["save_every=0"])


def test_ranges_admit_none_list_entries_and_refuse_nan():
    from vlarl.algos.ppo import PPOConfig
    from vlarl.recipes.sft import SFTConfig

    assert check_ranges(PPOConfig(target_kl=None)).target_kl is None  # None passes where the type has it
    check_ranges(SFTConfig(episodes_per_dataset=[3, 0]))
    with pytest.raises(ConfigError, match=r"episodes_per_dataset entries must be >= 0, got -1"):
        check_ranges(SFTConfig(episodes_per_dataset=[3, -1]))
    with pytest.raises(ConfigError, match="init_log_std must be a number"):
        load_config(PPOConfig, overrides=["init_log_std=nan"])
    assert range_of(PPOConfig, "normalize_advantages") is None  # a bool needs none


def _config_classes() -> dict[str, type]:
    """Every dataclass in vlarl that a config holds: the *Config classes and the ones nested in them."""
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(vlarl.__path__, "vlarl."):
        if info.name in ("vlarl.__main__", "vlarl.models.hf"):
            continue
        for name, obj in vars(importlib.import_module(info.name)).items():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    configs = {k: c for k, c in found.items() if k.endswith("Config")}
    todo = list(configs.values())
    while todo:  # nested configs (BetaSchedule, GCPGWeights, KeepOutZone, ...)
        for tp in typing.get_type_hints(todo.pop()).values():
            for arg in (tp, *typing.get_args(tp)):
                if dataclasses.is_dataclass(arg) and arg not in configs.values():
                    configs[f"{arg.__module__}.{arg.__name__}"] = arg
                    todo.append(arg)
    return configs


def test_every_numeric_config_field_declares_its_range():
    configs = _config_classes()
    assert len(configs) >= 30 and "vlarl.algos.conrft.BetaSchedule" in configs
    missing = []
    for name, cls in configs.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = {hints[f.name], *typing.get_args(hints[f.name])}
            box = f.name in ("low", "high")  # xyz boxes (safety, keep-out), checked as a whole
            if kinds & {int, float, list[int], list[float]} and RANGE_KEY not in f.metadata and not box:
                missing.append(f"{name}.{f.name}")
    assert not missing, missing


def test_shipped_configs_and_defaults_are_in_range():
    from vlarl.recipes.asap import ASAPConfig
    from vlarl.recipes.conrft import ConRFTRecipeConfig
    from vlarl.recipes.demo import DemoConfig
    from vlarl.recipes.grape import GRAPEConfig
    from vlarl.recipes.hil_serl import HILSERLConfig
    from vlarl.recipes.ire_vla import IReVLAConfig
    from vlarl.recipes.rldg import RLDGConfig
    from vlarl.recipes.rlpd import RLPDConfig

    for cls in _config_classes().values():
        check_ranges(cls())
    by_prefix = {"asap": ASAPConfig, "collect": CollectConfig, "conrft": ConRFTRecipeConfig, "demo": DemoConfig,
                 "grape": GRAPEConfig, "hil-serl": HILSERLConfig, "ire-vla": IReVLAConfig, "rldg": RLDGConfig,
                 "rlpd": RLPDConfig, "sac": RLPDConfig}
    paths = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(paths) >= 13
    for path in paths:
        load_config(next(c for p, c in by_prefix.items() if path.name.startswith(p)), path)


# --- overrides anywhere on the command line -------------------------------------------------
def test_overrides_after_flags_join_in_order(capsys):
    args = _parse(["train", "rlpd", "a=1", "--demos", "D", "steps=100", "--env", "toy/reach", "b.c=2"])
    assert args.overrides == ["a=1", "steps=100", "b.c=2"] and args.demos == "D"
    assert _parse(["collect", "--episodes", "5", "env.options.x=1", "--out", "d"]).overrides == ["env.options.x=1"]
    with pytest.raises(SystemExit):
        _parse(["train", "rlpd", "steps=1", "--demos", "D", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_an_override_after_a_flag_takes_effect(tmp_path, capsys):
    # the last steps= comes after --env: argparse alone refused it as an unrecognised argument
    err = _fails(["train", "rlpd", "steps=100", "--env", "toy/reach", "steps=-1", f"run_dir={tmp_path / 'r'}"], capsys)
    assert "override 'steps=-1': steps must be >= 1, got -1" in err
    out = tmp_path / "d"
    assert main(["collect", "--env", "toy/reach", "--obs-mode", "state", "--episodes", "1", "env.episode_length=5",
                 "--out", str(out), "seed=7"]) == 0
    (meta,) = EpisodeDataset(out).episodes
    assert meta.extra["env_options"]["episode_length"] == 5 and meta.extra["seed"] == 7


# --- datasets against the env they are used with --------------------------------------------
def _toy_dataset(path: Path, env: str, episodes: int = 3, state_dim: int | None = None) -> None:
    """Episodes shaped like toy/reach from state, recorded as if on ``env``."""
    from vlarl.envs import make
    from vlarl.envs.spaces import env_dims

    probe = make("toy/reach", obs_mode="state")
    s, a, _ = env_dims(probe)
    probe.close()
    s = state_dim or s
    rng = np.random.default_rng(0)
    with EpisodeWriter(path) as w:
        for _ in range(episodes):
            t = 6
            arrays = {"observation.state": rng.normal(size=(t + 1, s)).astype(np.float32),
                      "action": rng.uniform(-1, 1, (t, a)).astype(np.float32),
                      "reward": np.zeros(t, np.float32), "terminated": np.zeros(t, bool),
                      "truncated": np.eye(t, dtype=bool)[-1], "is_success": np.zeros(t, bool)}
            w.write_episode(arrays, "reach", "reach the target", env=env)


def _rlpd_args(demos: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", "rlpd", "--env", "toy/reach", "--demos", str(demos), "env.obs_mode=state", "steps=20",
            "random_steps=0", "eval_every=0", "save_every=20", "sac.ensemble=2", "sac.utd=1", "sac.batch_size=8",
            "sac.hidden=16", f"run_dir={run_dir}", *extra]


def test_demos_of_another_env_are_refused_unless_asked_for(tmp_path, capsys):
    demos = tmp_path / "drawer-close"
    _toy_dataset(demos, "metaworld/drawer-close")
    err = _fails(_rlpd_args(demos, tmp_path / "r1"), capsys)
    assert f"demos: {demos} was recorded on metaworld/drawer-close; this run uses toy/reach" in err
    assert "demos_env_check=false" in err and not (tmp_path / "r1").exists()
    # a deliberate transfer: the override accepts them (the shapes match)
    assert main(_rlpd_args(demos, tmp_path / "r2", "demos_env_check=false")) == 0
    assert json.loads((tmp_path / "r2" / "results.json").read_text())["steps"] == 20


def test_demos_with_other_shapes_are_refused_even_with_the_override(tmp_path, capsys):
    demos = tmp_path / "wide"
    _toy_dataset(demos, "toy/reach", state_dim=9)
    err = _fails(_rlpd_args(demos, tmp_path / "r", "demos_env_check=false"), capsys)
    assert f"demos: {demos} does not fit the run's env toy/reach (observation.state: the dataset has [9]" in err
    assert not (tmp_path / "r").exists()


def test_check_matches_names_features_and_missing_env_records(tmp_path):
    from vlarl.data.episodes import env_features

    path = tmp_path / "d"
    with EpisodeWriter(path) as w:  # an episode with no env recorded (an import, say)
        w.write_episode({"observation.state": np.zeros((3, 2), np.float32), "action": np.zeros((2, 1), np.float32),
                         "reward": np.zeros(2, np.float32), "terminated": np.zeros(2, bool),
                         "truncated": np.zeros(2, bool), "is_success": np.zeros(2, bool)}, "t", "i")
    data = EpisodeDataset(path)
    data.check_matches("toy/reach", env_features(2, 1), "demos", "x=false", check_env=False)
    with pytest.raises(DatasetError, match=r"recorded on \(no env recorded\); this run uses toy/reach. Set x=false"):
        data.check_matches("toy/reach", env_features(2, 1), "demos", "x=false")
    with pytest.raises(DatasetError, match=r"observation.images.top: the dataset has none, the run's env gives \[8, 8, 3\]"):
        data.check_matches("toy/reach", env_features(2, 1, {"top": (8, 8, 3)}), "demos", "x=false", check_env=False)


def test_sft_datasets_must_share_their_shapes(tmp_path):
    from vlarl.recipes.sft import SFTData

    a, b = tmp_path / "a", tmp_path / "b"
    for path, size in ((a, 8), (b, 12)):
        collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="pixels", image_size=size, episode_length=4),
                              episodes=1, out=str(path)), progress=False)
    with pytest.raises(VlarlError, match=r"shapes differ from .*observation.images.top \[12, 12, 3\] vs \[8, 8, 3\]"):
        SFTData([str(a), str(b)], chunk=1)


# --- damaged episodes -----------------------------------------------------------------------
def _damage(path: Path, index: int) -> Path:
    victim = next(path.glob(f"data/chunk-000/episode_{index:06d}.npz"))
    victim.write_bytes(victim.read_bytes()[:100])
    return victim


def test_sft_data_refuses_a_damaged_episode_by_default_and_skips_it_when_asked(tmp_path, capsys):
    from vlarl.recipes.sft import SFTData

    out = tmp_path / "d"
    collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="pixels", image_size=8, episode_length=4),
                          episodes=3, out=str(out)), progress=False)
    whole = SFTData([str(out)], chunk=1)
    victim = _damage(out, 1)
    with pytest.raises(DatasetError, match=r"episode_000001\.npz: episode 1 is truncated.*skip_bad_episodes=true"):
        SFTData([str(out)], chunk=1)
    capsys.readouterr()
    data = SFTData([str(out)], chunk=1, skip_bad=True)
    assert len(data.skipped) == 1 and str(victim) in data.skipped[0]
    assert len(data) == len(whole) - EpisodeDataset(out).episodes[1].length  # every frame of the other two
    err = capsys.readouterr().err
    assert f"skipped damaged episode: {victim}" in err and "skipped 1 damaged episode(s)" in err


def test_rlpd_skips_and_counts_damaged_demos_only_when_asked(tmp_path, capsys):
    demos = tmp_path / "demos"
    _toy_dataset(demos, "toy/reach", episodes=4)
    victim = _damage(demos, 2)
    err = _fails(_rlpd_args(demos, tmp_path / "r1"), capsys)
    assert "episode_000002.npz: episode 2 is truncated" in err and "skip_bad_episodes=true" in err
    assert main(_rlpd_args(demos, tmp_path / "r2", "skip_bad_episodes=true")) == 0
    results = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert results["skipped_episodes"]["count"] == 1 and str(victim) in results["skipped_episodes"]["episodes"][0]
    assert "skipped 1 damaged episode(s)" in capsys.readouterr().err


def test_a_critic_subset_larger_than_the_ensemble_is_refused(tmp_path, capsys):
    from vlarl.algos.sac import SACConfig

    run = tmp_path / "run"
    assert main(["train", "rlpd", "--env", "toy/reach", "sac.ensemble=2", "sac.subset=3", f"run_dir={run}"]) == 2
    assert "sac.subset (Z=3) must be at most sac.ensemble (E=2)" in capsys.readouterr().err
    assert not run.exists()
    assert SACConfig(ensemble=3, subset=3).subset == 3
    with pytest.raises(ConfigError, match="at most sac.ensemble"):
        SACConfig(ensemble=2, subset=5)
