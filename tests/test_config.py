from dataclasses import dataclass, field

import pytest

from vlarl.errors import ConfigError
from vlarl.runtime import load_config, save_config, valid_keys
from vlarl.runtime.config import Range, check_ranges, range_of, ranged


@dataclass
class Optim:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Recipe:
    env: str = "toy/reach"
    steps: int = 100
    seed: int | None = None
    use_demos: bool = True
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("steps: 500\noptim:\n  lr: 0.001\n")
    cfg = load_config(Recipe, path, ["optim.betas=[0.5, 0.9]", "seed=3", "use_demos=false"])
    assert cfg == Recipe(steps=500, seed=3, use_demos=False, optim=Optim(lr=0.001, betas=[0.5, 0.9]))
    assert load_config(Recipe) == Recipe()
    assert load_config(Recipe, overrides=["steps=2e3"]).steps == 2000


@dataclass
class Outer:
    optim: Optim = field(default_factory=lambda: Optim(lr=0.5, betas=[0.1, 0.2]))


def test_nested_override_keeps_the_enclosing_defaults():
    cfg = load_config(Outer, overrides=["optim.lr=0.25"])
    assert cfg.optim == Optim(lr=0.25, betas=[0.1, 0.2])  # not Optim's own default betas


@dataclass
class WithOptions:
    name: str = "toy/reach"
    options: dict = field(default_factory=dict)
    inner: Optim = field(default_factory=Optim)


def test_override_inside_a_mapping_field_merges_with_the_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("options: {reward: dense, size: 3}\n")
    cfg = load_config(WithOptions, path, ["options.reward=sparse", "options.terminate_on_success=false"])
    assert cfg.options == {"reward": "sparse", "size": 3, "terminate_on_success": False}
    with pytest.raises(ConfigError, match="unknown key 'inner.lr.x'"):  # a float field has no keys
        load_config(WithOptions, overrides=["inner.lr.x=1"])
    with pytest.raises(ConfigError, match="unknown key 'nam.x'"):
        load_config(WithOptions, overrides=["nam.x=1"])


def test_unknown_key_in_yaml_names_file_and_lists_valid_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Recipe, path)
    msg = str(err.value)
    assert str(path) in msg and "optim.lrr" in msg
    assert msg.split("valid: ")[1].startswith("optim.lr")


def test_unknown_override_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'stepz=3'.*unknown key 'stepz'; valid: steps"):
        load_config(Recipe, overrides=["stepz=3"])
    with pytest.raises(ConfigError, match="steps: expected an integer, got .many."):
        load_config(Recipe, overrides=["steps=many"])
    with pytest.raises(ConfigError, match="use_demos: expected true or false"):
        load_config(Recipe, overrides=["use_demos=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Recipe, overrides=["steps"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Recipe, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Recipe, bad)


def test_save_and_reload_round_trip(tmp_path):
    cfg = Recipe(steps=7, seed=1, optim=Optim(lr=0.5))
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Recipe, tmp_path / "c.yaml") == cfg
    assert "optim.betas" in valid_keys(Recipe)


def test_shipped_recipes_load():
    from pathlib import Path

    from vlarl.recipes.collect import CollectConfig
    from vlarl.recipes.demo import DemoConfig

    root = Path(__file__).parent.parent / "configs"
    assert load_config(DemoConfig, root / "demo.yaml") == DemoConfig()  # the file is the embedded default
    from vlarl.recipes.rlpd import RLPDConfig

    for path in [*root.glob("rlpd-*.yaml"), *root.glob("sac-*.yaml")]:
        cfg = load_config(RLPDConfig, path)
        assert cfg.env.name.startswith("metaworld/"), path
    for path in root.glob("collect-*.yaml"):
        cfg = load_config(CollectConfig, path)
        from vlarl.envs import valid_options

        assert set(cfg.env.kwargs()) <= set(valid_options(cfg.env.name)), path


@dataclass
class Bounded:
    steps: int = ranged(10, ge=1)
    gamma: float = ranged(0.99, gt=0, le=1)
    mode: str = ranged("a", choices=("a", "b"))
    names: list[str] = ranged(default_factory=lambda: ["a"], choices=("a", "b"))  # noqa: RUF009 -- a field
    limit: int | None = ranged(None, ge=0)
    inner: Outer = field(default_factory=Outer)


@dataclass
class Nested:
    bounded: Bounded = field(default_factory=Bounded)


def test_declared_ranges_are_checked_at_load_naming_key_value_and_range(tmp_path):
    assert load_config(Bounded, overrides=["limit=0", "names=[a,b]", "gamma=1"]).limit == 0
    with pytest.raises(ConfigError) as err:
        load_config(Nested, overrides=["bounded.steps=0", "bounded.gamma=0", "bounded.mode=c", "bounded.names=[a,z]"])
    assert str(err.value).split("; ") == [
        "override 'bounded.steps=0': bounded.steps must be >= 1, got 0",
        "override 'bounded.gamma=0': bounded.gamma must be in (0, 1], got 0.0",
        "override 'bounded.mode=c': bounded.mode must be one of its choices, got 'c' (valid: a, b)",
        "override 'bounded.names=[a,z]': bounded.names entries must be one of its choices, got 'z' (valid: a, b)"]
    path = tmp_path / "r.yaml"
    path.write_text("bounded: {limit: -1}\n")
    with pytest.raises(ConfigError, match=f"^{path}: bounded.limit must be >= 0, got -1$"):
        load_config(Nested, path)


def test_check_ranges_on_configs_built_in_python():
    assert check_ranges(Bounded()) == Bounded()
    with pytest.raises(ConfigError, match=r"^sft: steps must be >= 1, got -5$"):
        check_ranges(Bounded(steps=-5), "sft")
    with pytest.raises(ConfigError, match=r"^config: twin.gamma must be in \(0, 1\], got nan$"):
        check_ranges(Bounded(gamma=float("nan")), prefix="twin.")
    assert check_ranges(None) is None  # a resumed run: checked when it was loaded
    with pytest.raises(TypeError, match="bounds or choices"):
        ranged(1, ge=0, choices=(1, 2))


def test_range_descriptions():
    assert [Range(ge=1).describe(), Range(gt=0).describe(), Range(ge=0, lt=1).describe(), Range(le=5).describe(),
            Range().describe(), Range(choices=("x",)).describe()] == [
        ">= 1", "> 0", "in [0, 1)", "<= 5", "a number (not NaN)", "one of 'x'"]
    assert range_of(Bounded, "gamma") == Range(gt=0, le=1) and range_of(Outer, "optim") is None
