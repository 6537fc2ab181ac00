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

    import vlarl.runtime.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "save_state", broken_save)  # fails after the weights file is written
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
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ bytes, meta.json records \d+"):
        load_checkpoint(path, {"model": make_model()})
    with pytest.raises(CheckpointError, match="no checkpoint found"):
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


# --- the state file: JSON + safetensors, no pickle ------------------------------------------
def _state_tree(tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "mm.npy", mode="w+", dtype=np.uint8, shape=(3, 4))
    mm[:] = np.arange(12, dtype=np.uint8).reshape(3, 4)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "pcg": np.random.default_rng(7).bit_generator.state, "opt": opt.state_dict(),
        "ints": {0: "zero", -3: "minus three", 2**62: "big key"}, "big": 2**200 + 1, "neg": -(2**70),
        "floats": [float("nan"), float("inf"), float("-inf"), -0.0, 1e-310, 0.1],
        "flags": (True, False, None), "nested": [(1, (2, [3])), {"$looks_like_a_tag": 1, "": 2}],
        "np_scalars": [np.float32(1.5), np.int64(-2), np.bool_(True), np.uint64(2**64 - 1), np.float16(0.25)],
        "arrays": {d: np.arange(6).astype(d).reshape(2, 3) for d in
                   ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
                    "float16", "float32", "float64")},
        "memmap": mm, "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "empty": np.zeros((0, 5), np.float32),
        "tensors": [torch.randn(3, dtype=torch.bfloat16), torch.arange(4, dtype=torch.int32), torch.zeros(0),
                    torch.ones(2, 2, dtype=torch.bool), torch.arange(6.0).reshape(2, 3).t()],
        "views": [torch.arange(10.0)[2:5], torch.arange(10.0)],
    }


def _same(a, b, path="tree"):
    """Equal values of exactly the same types (dtypes, shapes, tuple vs list, int keys)."""
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and type(b) is np.ndarray), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b) and [type(k) for k in a] == [type(k) for k in b], path
        for k in a:
            _same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), path
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b and (not isinstance(a, float) or str(a) == str(b)), (path, a, b)  # -0.0 stays -0.0


def test_state_file_round_trip_keeps_types_exactly(tmp_path):
    from vlarl.runtime.statefile import load_state, save_state

    tree = _state_tree(tmp_path)
    digests = save_state(tmp_path / "state.json", tree)
    assert set(digests) == {"state.json", "state.safetensors"}
    back = load_state(tmp_path / "state.json")
    _same(tree, back)
    assert type(back["python"][1]) is tuple and isinstance(back["pcg"]["state"]["state"], int)
    assert back["arrays"]["uint64"].dtype == np.uint64 and back["tensors"][0].dtype == torch.bfloat16
    back["memmap"][0, 0] = 99  # an array in memory, writable, not tied to the saved file
    assert load_state(tmp_path / "state.json")["memmap"][0, 0] == 0
    text = (tmp_path / "state.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: any reader parses it


def test_state_file_rng_state_continues_the_same_streams(tmp_path):
    from vlarl.runtime.seeding import get_rng_state, set_rng_state
    from vlarl.runtime.statefile import load_state, save_state

    rng, gen = seed_everything(3), torch.Generator().manual_seed(5)
    random.random(), np.random.normal(), torch.randn(2), rng.normal(), torch.rand(1, generator=gen)
    save_state(tmp_path / "rng.json", get_rng_state({"rng": rng, "gen": gen}))

    def draws():
        return (random.random(), float(np.random.normal()), torch.randn(3).tolist(), float(rng.normal()),
                torch.rand(2, generator=gen).tolist(), random.gauss(0, 1))

    expected = draws()
    seed_everything(99), rng.normal(), gen.manual_seed(1)  # move every stream elsewhere
    set_rng_state(load_state(tmp_path / "rng.json"), {"rng": rng, "gen": gen})
    assert draws() == expected


@pytest.mark.parametrize("value, where", [
    ({"a": {1, 2}}, r"state\['a'\]: a builtins.set"),
    ({"a": [np.array(["x"], dtype=object)]}, r"state\['a'\]\[0\]: numpy dtype"),
    ({"opt": {"state": {0: {"p": torch.nn.Parameter(torch.ones(1))}}}}, r"state\['opt'\]\['state'\]\[0\]\['p'\]"),
    ({"k": {(1, 2): 3}}, r"state\['k'\]: key \(1, 2\) is a tuple"),
    ({"k": {True: 3}}, r"state\['k'\]: key True is a bool"),
    ({"path": __import__("pathlib").Path("x")}, r"state\['path'\]: a pathlib"),
    ({"c": [1j]}, r"state\['c'\]\[0\]: a builtins.complex"),
])
def test_state_file_refuses_what_it_cannot_hold_naming_the_key(tmp_path, value, where):
    from vlarl.runtime.statefile import save_state

    with pytest.raises(TypeError, match=where):
        save_state(tmp_path / "state.json", value)
    assert not (tmp_path / "state.json").exists()


def _header(tmp_path, tree):
    from vlarl.runtime.statefile import save_state

    save_state(tmp_path / "state.json", tree)
    return json.loads((tmp_path / "state.json").read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda h: h["tree"].update({"x": {"$pickle": "gASV"}}), "unknown tag '\\$pickle'"),
    (lambda h: h["tree"].update({"x": {"$tensor": "99"}}), "refers to array '99'"),
    (lambda h: h["tree"].update({"x": {"$int": "1e9"}}), "\\$int must be a hex string"),
    (lambda h: h["tree"].update({"x": {"$tuple": 3}}), "\\$tuple of a int"),
    (lambda h: h["tree"].update({"x": {"$dict": [[1.5, 2]]}}), "neither str nor int"),
    (lambda h: h["tree"]["a"].update(dtype="object"), "numpy dtype 'object'"),
    (lambda h: h["tree"]["a"].update(dtype="float64"), "numpy dtype 'float64' over stored torch.int64"),
    (lambda h: h["tree"].update({"x": {"$tensor": "0"}}), "refers to array '0'"),  # taken by "a" already
    (lambda h: h["tree"].pop("a"), "holds arrays the state file does not refer to"),
    (lambda h: h.update(format="pickle"), "not a vlarl state file"),
    (lambda h: h.update(version=7), "state file version 7"),
    (lambda h: h["tensors"].update(file="../../etc/passwd"), "\"tensors\" must be"),
    (lambda h: h["tensors"].update(sha256="0" * 64), "sha256 .* records 0000"),
])
def test_state_file_refuses_malformed_input_naming_the_file(tmp_path, edit, message):
    from vlarl.runtime.statefile import load_state

    header = _header(tmp_path, {"a": np.arange(3), "b": 1})
    edit(header)
    (tmp_path / "state.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=message) as err:
        load_state(tmp_path / "state.json")
    assert "state.json" in str(err.value) or "state.safetensors" in str(err.value)


def test_state_file_refuses_bad_bytes_naming_the_file(tmp_path):
    from vlarl.runtime.statefile import load_state, save_state

    save_state(tmp_path / "state.json", {"a": np.arange(3)})
    good = (tmp_path / "state.json").read_bytes()
    cases = {
        b"\xff\xfe" + good[2:]: "unreadable \\(UnicodeDecodeError",  # a named error, not a raw traceback
        good[: len(good) // 2]: "unreadable \\(JSONDecodeError",
        good.replace(b'"version": 1', b'"version": NaN'): "unreadable \\(ValueError: NaN is not JSON",
        b'{"a": 1, "a": 2}': "unreadable \\(ValueError: duplicate keys",
        b"[" * 100_000: "unreadable \\(RecursionError",
    }
    for data, message in cases.items():
        (tmp_path / "state.json").write_bytes(data)
        with pytest.raises(CheckpointError, match=f"state.json: {message}"):
            load_state(tmp_path / "state.json")
    (tmp_path / "state.json").write_bytes(good)
    (tmp_path / "state.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"not json")
    with pytest.raises(CheckpointError, match="state.safetensors: .*bytes, state.json records"):
        load_state(tmp_path / "state.json")
    with pytest.raises(CheckpointError, match="state.safetensors: unreadable safetensors"):
        load_state(tmp_path / "state.json", verify=False)


def test_loading_a_checkpoint_never_unpickles(tmp_path, monkeypatch):
    import pickle

    model, opt = make_model(), None
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path, 3, {"model": model}, {"opt": opt}, {"step": 3, "buf": np.ones(4, np.uint8)},
                    {"rng": np.random.default_rng(0), "gen": torch.Generator()})

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, forbidden)
    counters = load_checkpoint(tmp_path, {"model": make_model()}, {"opt": torch.optim.Adam(make_model().parameters())},
                               {"rng": np.random.default_rng(1), "gen": torch.Generator()})
    assert counters["step"] == 3 and counters["buf"].dtype == np.uint8
    assert sorted(p.name for p in latest_checkpoint(tmp_path).iterdir()) == [
        "meta.json", "model.safetensors", "state.json", "state.safetensors"]
    meta = json.loads((latest_checkpoint(tmp_path) / "meta.json").read_text())
    assert all(len(f["sha256"]) == 64 for f in meta["files"].values())


def test_new_run_directories_are_private(tmp_path):
    import stat

    with Run.create(tmp_path, "r", TinyConfig()) as run:
        run.save(1, {"model": make_model()})
    mode = stat.S_IMODE((tmp_path / "r").stat().st_mode)
    assert mode == 0o700, oct(mode)
    (tmp_path / "r").chmod(0o755)  # as an older vlarl left it: a resume makes it private
    Run.resume(tmp_path / "r", TinyConfig).close()
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o700


# --- resuming: exactly where it stopped; a finished run does nothing -------------------------
def _hil_cfg(run_dir, **kw):
    from vlarl.envs.intervention import SimulatedHumanConfig
    from vlarl.recipes.collect import EnvConfig
    from vlarl.recipes.hil_serl import HILSERLConfig, _default_sac

    sac = _default_sac()
    sac.gripper_critic, sac.hidden, sac.batch_size = False, 32, 64
    base = dict(env=EnvConfig(name="toy/reach", obs_mode="state"), relative_frame=False, demos=2, sac=sac,
                sim_human=SimulatedHumanConfig(budget=10, decay_steps=800), eval_every=0, final_eval_episodes=3,
                video=False, runtime="inprocess", steps=500, save_every=100, run_dir=str(run_dir))
    base.update(kw)
    return HILSERLConfig(**base)


def _weights(run_dir, module):
    from safetensors.torch import load_file

    return load_file(str(latest_checkpoint(run_dir / "checkpoints") / f"{module}.safetensors"))


def test_hil_serl_in_process_resumes_exactly_after_ctrl_c_mid_episode(tmp_path, monkeypatch):
    import signal

    from vlarl.recipes.hil_serl import HILSERLConfig, train_hil_serl
    from vlarl.runtime.sources import LocalSource

    straight = train_hil_serl(_hil_cfg(tmp_path / "straight"), progress=False)
    real_collect = LocalSource.collect
    calls = []

    def collect(self):
        out = real_collect(self)
        calls.append(1)
        if len(calls) == 230:  # an episode of toy/reach is 30 steps: mid-episode
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(LocalSource, "collect", collect)
    with pytest.raises(KeyboardInterrupt):
        train_hil_serl(_hil_cfg(tmp_path / "split"), progress=False)
    monkeypatch.undo()
    resume = Run.resume(tmp_path / "split", HILSERLConfig)
    assert 230 < resume.resumed_step < 300  # it stopped once the episode in progress ended
    resumed = train_hil_serl(resume=resume, progress=False)
    for key in ("env_steps", "updates", "num_episodes", "final_success"):
        assert resumed[key] == straight[key], key
    a, b = _weights(tmp_path / "straight", "agent"), _weights(tmp_path / "split", "agent")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rlpd_resumes_exactly_from_a_checkpoint_mid_episode(tmp_path):
    from vlarl.algos.sac import SACConfig
    from vlarl.recipes.collect import EnvConfig
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd

    def cfg(name, steps):
        return RLPDConfig(env=EnvConfig(name="toy/reach", obs_mode="state"), steps=steps, random_steps=50,
                          sac=SACConfig(ensemble=2, utd=1, batch_size=32, hidden=16), eval_every=100,
                          eval_episodes=2, eval_envs=1, save_every=100, run_dir=str(tmp_path / name))

    straight = train_rlpd(cfg("straight", 400), progress=False)
    train_rlpd(cfg("split", 217), progress=False)  # its last checkpoint 7 steps into an episode
    resumed = train_rlpd(resume=Run.resume(tmp_path / "split", RLPDConfig, ["steps=400"]), progress=False)
    assert resumed["resumed_from"] == 217 and resumed["buffer_frames"] == straight["buffer_frames"]
    assert [e["step"] for e in resumed["evals"]] == [100, 200, 217, 300, 400]  # those before the stop are kept
    a, b = _weights(tmp_path / "straight", "agent"), _weights(tmp_path / "split", "agent")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_finished_run_does_nothing(tmp_path, capsys):
    from vlarl.algos.sac import SACConfig
    from vlarl.recipes.collect import EnvConfig
    from vlarl.recipes.hil_serl import HILSERLConfig, train_hil_serl
    from vlarl.recipes.rlpd import RLPDConfig, train_rlpd

    hil = tmp_path / "hil"
    results = train_hil_serl(_hil_cfg(hil, steps=120, demos=0, human="none"), progress=False)
    rlpd = tmp_path / "rlpd"
    train_rlpd(RLPDConfig(env=EnvConfig(name="toy/reach", obs_mode="state"), steps=60, random_steps=20,
                          sac=SACConfig(ensemble=2, utd=1, batch_size=16, hidden=16), eval_every=60,
                          eval_episodes=1, eval_envs=1, run_dir=str(rlpd)), progress=False)
    for run_dir, train, cfg_cls, unit in ((hil, train_hil_serl, HILSERLConfig, results["env_steps"]),
                                          (rlpd, train_rlpd, RLPDConfig, 60)):
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        capsys.readouterr()
        again = train(resume=Run.resume(run_dir, cfg_cls), progress=False)
        err = capsys.readouterr().err
        assert f"is finished (at step {unit} of" in err, err
        assert again == json.loads((run_dir / "results.json").read_text())
        after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert after == before  # no evaluation re-run, no row appended, no checkpoint written
    assert len(again["evals"]) == 1
    # a larger step count continues a finished run
    more = train_rlpd(resume=Run.resume(rlpd, RLPDConfig, ["steps=80"]), progress=False)
    assert more["steps"] == 80 and more["resumed_from"] == 60


def test_resuming_a_finished_sft_run_from_the_command_line_does_nothing(tmp_path, capsys):
    from vlarl.cli import main
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect

    demos = tmp_path / "demos"
    collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="pixels", image_size=32), episodes=2,
                          out=str(demos)), progress=False)
    run_dir = tmp_path / "sft"
    small = [f"datasets=[{demos}]", "policy.encoder=conv", "policy.dim=16", "policy.layers=1", "batch_size=8",
             "eval_episodes=1", "eval_envs=1", "video_episodes=0", "save_every=2", f"run_dir={run_dir}"]
    assert main(["train", "sft", "steps=4", *small]) == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "sft", "--resume", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "is finished (at step 4 of 4)" in captured.err
    assert json.loads(captured.out)["steps"] == 4
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    assert main(["train", "sft", "--resume", str(run_dir), "steps=6"]) == 0  # a larger total continues it
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 6
