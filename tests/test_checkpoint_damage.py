"""Damaged and crafted checkpoints: named refusals, announced fallbacks, nothing run, nothing lost."""

import hashlib
import json
import os
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from vlarl.errors import CheckpointError
from vlarl.runtime import Run, latest_checkpoint, load_checkpoint, save_checkpoint


def make_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


@dataclass
class Cfg:
    steps: int = 30
    seed: int = 0


def make_run(tmp_path, saves=(10, 20, 30), name="run"):
    """A run with checkpoints at ``saves``, a metrics row per step and a results.json."""
    with Run.create(tmp_path, name, Cfg()) as run:
        model, opt = make_model(), None
        opt = torch.optim.Adam(model.parameters())
        for step in range(1, max(saves) + 1):
            run.log(step, loss=1.0 / step)
            if step in saves:
                model(torch.randn(2, 4)).sum().backward()
                opt.step()
                run.save(step, {"model": model}, {"opt": opt}, {"step": step, "buf": np.arange(step)},
                         {"rng": np.random.default_rng(step)})
        run.write_results({"done": True})
    return tmp_path / name


def snapshot(run_dir):
    """Every file under a run with its bytes (to show nothing was touched)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def flip(path, offset, n=64):
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rehash(ckpt):
    """Rewrite meta.json with the files' current sizes and hashes, as someone crafting a
    checkpoint would: the hash check passes, so whatever is in the files must be refused by parsing."""
    meta = json.loads((ckpt / "meta.json").read_text())
    for name, entry in meta["files"].items():
        data = (ckpt / name).read_bytes()
        entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (ckpt / "meta.json").write_text(json.dumps(meta))


class MakesAFile:
    """A pickle that creates ``path`` when unpickled (as a crafted one could run any code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_crafted_pickle_does_run_code_when_unpickled(tmp_path):  # so the tests below can fail
    pickle.loads(pickle.dumps(MakesAFile(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


def test_an_old_pickled_checkpoint_is_refused_without_running_it(tmp_path, capsys):
    run_dir = make_run(tmp_path, saves=(10,))
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    marker = tmp_path / "pwned"
    # the layout of an older vlarl: state.pt beside the weights, meta.json with sizes
    (ckpt / "state.pt").write_bytes(pickle.dumps({"counters": MakesAFile(marker)}))
    for name in ("state.json", "state.safetensors"):
        (ckpt / name).unlink()
    files = {p.name: p.stat().st_size for p in ckpt.iterdir() if p.name != "meta.json"}
    (ckpt / "meta.json").write_text(json.dumps({"step": 10, "modules": ["model"], "files": files}))
    before = snapshot(run_dir)
    for attempt in (lambda: load_checkpoint(ckpt, {"model": make_model()}),
                    lambda: Run.resume(run_dir, Cfg),
                    lambda: Run.resume(run_dir, Cfg, allow_older=True)):
        with pytest.raises(CheckpointError, match=r"state\.pt: .*pickle.*no longer loads") as err:
            attempt()
        assert str(ckpt) in str(err.value)
    assert not marker.exists()
    assert snapshot(run_dir) == before
    (ckpt / "state.pt").unlink()  # only the old meta.json left: still a clear refusal
    with pytest.raises(CheckpointError, match="meta.json: an older vlarl's checkpoint"):
        load_checkpoint(ckpt, {"model": make_model()})


@pytest.mark.parametrize("target", ["state.json", "state.safetensors", "model.safetensors", "meta.json"])
def test_a_crafted_file_with_matching_hashes_runs_nothing(tmp_path, target):
    ckpt = save_checkpoint(tmp_path, 5, {"model": make_model()}, counters={"step": 5})
    marker = tmp_path / "pwned"
    payload = pickle.dumps(MakesAFile(marker))
    (ckpt / target).write_bytes(payload)
    if target != "meta.json":
        rehash(ckpt)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, {"model": make_model()})
    assert str(ckpt / target) in str(err.value)
    assert not marker.exists()


def test_damaged_newest_checkpoint_is_refused_by_name(tmp_path):
    run_dir = make_run(tmp_path)
    newest = run_dir / "checkpoints" / "step_000000030"
    truncate(newest / "model.safetensors")
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as err:
        Run.resume(run_dir, Cfg)
    message = str(err.value)
    assert str(newest) in message and "model.safetensors" in message and "truncated" in message
    assert "step_000000020" in message and "lose 10 steps" in message and "--resume-from-older" in message
    assert snapshot(run_dir) == before  # metrics.jsonl, results.json and the checkpoint untouched
    with pytest.raises(CheckpointError, match="step_000000030 is damaged"):
        latest_checkpoint(run_dir / "checkpoints")


def test_resume_from_older_announces_the_fallback(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    newest = run_dir / "checkpoints" / "step_000000030"
    truncate(newest / "state.safetensors")
    with Run.resume(run_dir, Cfg, allow_older=True) as run:
        assert run.resumed_step == 20
        err = capsys.readouterr().err
        assert "step_000000030 is damaged" in err and "state.safetensors" in err
        assert "resuming from step_000000020" in err and "losing 10 steps" in err
        # set aside, not deleted; the run goes on from step 20
        assert not newest.exists() and (newest.parent / "step_000000030.damaged" / "model.safetensors").exists()
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 21))
        model = make_model()
        counters = run.restore({"model": model}, {"opt": torch.optim.Adam(model.parameters())},
                               {"rng": np.random.default_rng()})
        assert counters["step"] == 20 and np.array_equal(counters["buf"], np.arange(20))
        run.save(25, {"model": model})
    with Run.resume(run_dir, Cfg) as run:  # no refusal now: the damaged one is out of the way
        assert run.resumed_step == 25


def test_flipped_bytes_in_the_state_file_are_a_named_error(tmp_path):
    ckpt = save_checkpoint(tmp_path, 5, {"model": make_model()}, counters={"step": 5})
    flip(ckpt / "state.json", 0)
    with pytest.raises(CheckpointError, match=r"state\.json: sha256 .* records .*bytes changed"):
        load_checkpoint(ckpt, {"model": make_model()})
    rehash(ckpt)  # even with matching hashes: a named error, never a raw UnicodeDecodeError
    with pytest.raises(CheckpointError, match=r"state\.json: unreadable \(UnicodeDecodeError"):
        load_checkpoint(ckpt, {"model": make_model()})


def test_flipped_bytes_in_the_weights_are_a_hash_mismatch(tmp_path):
    model = make_model()
    ckpt = save_checkpoint(tmp_path, 5, {"model": model})
    size = (ckpt / "model.safetensors").stat().st_size
    flip(ckpt / "model.safetensors", size - 100)  # inside the tensor data: safetensors alone would load it
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .*, meta.json records .*bytes changed"):
        load_checkpoint(ckpt, {"model": make_model()})


def test_every_checkpoint_damaged_stops_and_keeps_the_history(tmp_path):
    run_dir = make_run(tmp_path)
    for ckpt in (run_dir / "checkpoints").glob("step_*"):
        truncate(ckpt / "model.safetensors")
    before = snapshot(run_dir)
    assert len(before["metrics.jsonl"].splitlines()) == 30 and b"done" in before["results.json"]
    for allow_older in (False, True):
        with pytest.raises(CheckpointError, match="No intact checkpoint is left") as err:
            Run.resume(run_dir, Cfg, allow_older=allow_older)
        assert "step_000000010" in str(err.value) and "step_000000030" in str(err.value)
    assert snapshot(run_dir) == before  # byte for byte


def test_a_run_with_history_but_no_checkpoint_is_not_restarted(tmp_path):
    run_dir = make_run(tmp_path)
    for ckpt in (run_dir / "checkpoints").glob("step_*"):
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from, but the run has history"):
        Run.resume(run_dir, Cfg)
    assert snapshot(run_dir) == before
    # a run that stopped before its first checkpoint simply starts again
    with Run.create(tmp_path, "early", Cfg()) as run:
        run.log(1, loss=1.0)
    with Run.resume(tmp_path / "early", Cfg) as run:
        assert run.resumed_step is None
    assert (tmp_path / "early" / "metrics.jsonl").read_text() == ""
    # so does a parent recipe's run that keeps no checkpoints of its own (its stages are sub-runs)
    with Run.create(tmp_path, "parent", Cfg()) as run:
        run.write_results({"done": True})
    with Run.resume(tmp_path / "parent", Cfg) as run:
        assert run.resumed_step is None


def test_a_failed_save_never_leaves_a_damaged_newest(tmp_path, monkeypatch):
    import vlarl.runtime.checkpoint as checkpoint

    run_dir = make_run(tmp_path, saves=(10,))

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_state", disk_full)
    with Run.resume(run_dir, Cfg) as run, pytest.raises(OSError, match="disk full"):
        run.save(20, {"model": make_model()})
    monkeypatch.undo()
    assert any(p.name.startswith(".step_000000020") for p in (run_dir / "checkpoints").iterdir())
    with Run.resume(run_dir, Cfg) as run:  # the half-written save is hidden: no refusal
        assert run.resumed_step == 10


def test_meta_json_problems_are_named(tmp_path):
    ckpt = save_checkpoint(tmp_path, 5, {"model": make_model()})
    good = (ckpt / "meta.json").read_text()
    cases = {
        "{": "meta.json: unreadable JSON",
        "[]": "meta.json: not a JSON object",
        good.replace('"step": 5', '"step": 6'): "records step 6, but the directory is step_000000005",
        good.replace('"model.safetensors"', '"../model.safetensors"'): "not a plain file name",
        good.replace('"format": 2', '"format": 3'): "checkpoint format 3",
    }
    for text, message in cases.items():
        (ckpt / "meta.json").write_text(text)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(ckpt, {"model": make_model()})
    os.remove(ckpt / "meta.json")
    with pytest.raises(CheckpointError, match="meta.json: missing"):
        load_checkpoint(ckpt, {"model": make_model()})
