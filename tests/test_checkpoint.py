import json
import random
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from vlarl.errors import CheckpointError
from vlarl.runtime import Run, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint, seed_everything


def make_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


def test_round_trip_weights_optimiser_counters(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 10, {"model": model}, {"opt": opt}, {"env_steps": 123})
    assert (path / "model.safetensors").exists() and (tmp_path / "latest").read_text().strip() == path.name
    other = make_model()
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-2)
    counters = load_checkpoint(tmp_path, {"model": other}, {"opt": other_opt})
    assert counters == {"env_steps": 123}
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], other_opt.state_dict()["state"][0]["exp_avg"])


def test_failure_during_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model = make_model()
    first = save_checkpoint(tmp_path, 1, {"model": model})
    saved = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)  # fails after the weights file is written
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, {"model": model})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == first
    assert list_checkpoints(tmp_path) == [first]
    fresh = make_model()
    load_checkpoint(tmp_path, {"model": fresh})
    for a, b in zip(fresh.parameters(), saved):
        assert torch.equal(a, b)


SAVER_SCRIPT = """
import sys, torch
from vlarl.runtime import save_checkpoint
root = sys.argv[1]
model = torch.nn.Linear(512, 512)
step = 0
while True:
    step += 1
    with torch.no_grad():
        model.weight.fill_(step)
    save_checkpoint(root, step, {"model": model}, counters={"step": step}, keep=2)
    print(step, flush=True)
"""


def test_kill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    for delay in (0.3, 0.55, 0.8):
        root = tmp_path / f"kill{delay}"
        proc = subprocess.Popen([sys.executable, "-c", SAVER_SCRIPT, str(root)], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # at least one checkpoint exists
        assert first.strip() == "1"
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.wait()
        model = torch.nn.Linear(512, 512)
        counters = load_checkpoint(root, {"model": model})
        assert torch.all(model.weight == counters["step"])  # weights and counters from the same save


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 5, {"model": make_model()})
    with open(path / "model.safetensors", "ab") as f:
        f.write(b"junk")
    with pytest.raises(CheckpointError, match="incomplete or its files were altered"):
        load_checkpoint(path, {"model": make_model()})
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "nothing", {"model": make_model()})
    good = save_checkpoint(tmp_path / "b", 1, {"model": make_model()})
    with pytest.raises(CheckpointError, match="no weights for"):
        load_checkpoint(good, {"critic": make_model()})


@dataclass
class TinyConfig:
    steps: int = 12
    seed: int = 0
    save_every: int = 4


def train(run: Run, stop_at: int | None = None):
    """A tiny trainer whose every step draws from torch, numpy, Python and a Generator."""
    cfg = run.config
    rng = seed_everything(cfg.seed)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    counters = run.restore({"model": model}, {"opt": opt}, {"rng": rng}) or {"step": 0}
    step = counters["step"]
    while step < (stop_at or cfg.steps):
        x = torch.randn(16, 4) + 0.1 * (float(np.random.normal()) + random.random() + float(rng.normal()))
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        run.log(step, loss=loss.item())
        if step % cfg.save_every == 0:
            run.save(step, {"model": model}, {"opt": opt}, {"step": step}, {"rng": rng})
    return model, (torch.randn(1).item(), np.random.normal(), random.random(), rng.normal())


def test_resume_restores_counters_and_rng_exactly(tmp_path):
    with Run.create(tmp_path, "straight", TinyConfig()) as run:
        straight, draws_straight = train(run)
    with Run.create(tmp_path, "split", TinyConfig()) as run:
        train(run, stop_at=10)  # last checkpoint at step 8; steps 9-10 are lost with the "crash"
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # a new process would differ
    with Run.resume(tmp_path / "split", TinyConfig) as run:
        assert run.resumed_step == 8
        resumed, draws_resumed = train(run)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)
    assert draws_straight == draws_resumed
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the lost steps 9-10 were dropped, then logged again
    assert (tmp_path / "split" / "tb").is_dir()


def test_run_refuses_to_overwrite_and_resume_needs_a_run(tmp_path):
    with Run.create(tmp_path, "a", TinyConfig()) as run:
        run.save(1, {"model": make_model()})
    from vlarl.errors import VlarlError

    with pytest.raises(VlarlError, match="already exists.*--resume"):
        Run.create(tmp_path, "a", TinyConfig())
    with pytest.raises(VlarlError, match="not a run directory"):
        Run.resume(tmp_path / "nope", TinyConfig)
    with Run.resume(tmp_path / "a", TinyConfig, ["steps=50"]) as run:
        assert run.config.steps == 50 and run.resumed_step == 1
