"""Weights & Biases beside TensorBoard: off unless asked, a clear error when asked without it
installed, and every logged scalar sent (one W&B run per run directory, kept on resume)."""

import json
import sys
import types

import pytest

from vlarl.errors import VlarlError
from vlarl.runtime import Run


class _Recorder(types.ModuleType):
    """Stands in for the wandb module and records what vlarl calls on it."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0
        self.util = types.SimpleNamespace(generate_id=lambda: f"id{len(self.inits)}")

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, row, step):
        self.logs.append((step, row))

    def finish(self):
        self.finished += 1


def test_wandb_logs_every_scalar_when_asked_and_keeps_its_run_on_resume(tmp_path, monkeypatch):
    from vlarl.recipes.sft import SFTConfig

    fake = _Recorder()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("VLARL_WANDB_PROJECT", "robots")
    run = Run.create(tmp_path, "r1", SFTConfig(steps=7))
    run.log(5, loss=0.5, success=1.0)
    run.close()
    assert fake.inits[0]["project"] == "robots" and fake.inits[0]["name"] == "r1"
    assert fake.inits[0]["config"]["steps"] == 7 and fake.logs == [(5, {"loss": 0.5, "success": 1.0})]
    assert fake.finished == 1
    rows = [json.loads(line) for line in (tmp_path / "r1" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == 0.5  # TensorBoard and metrics.jsonl as always
    resumed = Run.resume(tmp_path / "r1", SFTConfig)
    resumed.close()
    assert fake.inits[1]["id"] == fake.inits[0]["id"] and fake.inits[1]["resume"] == "allow"


def test_wandb_is_off_unless_asked_and_named_when_missing(tmp_path, monkeypatch):
    from vlarl.recipes.sft import SFTConfig

    monkeypatch.delenv("VLARL_WANDB_PROJECT", raising=False)
    fake = _Recorder()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    Run.create(tmp_path, "quiet", SFTConfig()).close()
    assert fake.inits == []
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    monkeypatch.setenv("VLARL_WANDB_PROJECT", "robots")
    with pytest.raises(VlarlError, match="wandb is not installed"):
        Run.create(tmp_path, "loud", SFTConfig())
