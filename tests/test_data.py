import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vlarl.data import EpisodeDataset, EpisodeWriter
from vlarl.envs import ScriptedExpert, make
from vlarl.errors import DatasetError
from vlarl.eval import run_episode


def toy_episode(seed, image_size=16):
    env = make("toy/reach", obs_mode="state+pixels", image_size=image_size)
    return run_episode(env, ScriptedExpert(env, noise=0.3, seed=seed), seed=seed)


def test_round_trip_step_by_step_and_whole(tmp_path):
    env = make("toy/reach", obs_mode="state+pixels", image_size=16)
    expert = ScriptedExpert(env, noise=0.2, seed=0)
    with EpisodeWriter(tmp_path) as w:
        obs, _ = env.reset(seed=0)
        w.start_episode(obs, "reach", "move the red dot to the green target")
        states, images, actions = [obs["state"]], [obs["pixels"]["top"]], []
        done = False
        while not done:
            a = expert(obs)
            obs, r, term, trunc, info = env.step(a)
            w.add_step(a, r, obs, term, trunc, info["is_success"])
            states.append(obs["state"]), images.append(obs["pixels"]["top"]), actions.append(a)
            done = term or trunc
        meta0 = w.end_episode(source="expert", operator="test")
        result = toy_episode(1)
        meta1 = w.write_episode(result.arrays, "reach", "move", source="policy")
    data = EpisodeDataset(tmp_path)
    assert len(data) == 2 and data.cameras == ["top"]
    ep0 = data.load(0)
    np.testing.assert_array_equal(ep0["observation.state"], np.stack(states))
    np.testing.assert_array_equal(ep0["observation.images.top"], np.stack(images))
    np.testing.assert_array_equal(ep0["action"], np.stack(actions))
    assert ep0["observation.images.top"].dtype == np.uint8
    assert data.episodes[0].length == len(actions) == meta0.length
    assert data.episodes[0].extra == {"operator": "test"}
    assert data.episodes[1].source == "policy" and data.episodes[1].success == meta1.success == result.success
    for key, value in result.arrays.items():
        np.testing.assert_array_equal(data.load(1, [key])[key], value)
    assert data.episodes[1].episode_return == pytest.approx(float(result.arrays["reward"].sum()))
    summary = data.summary()
    assert summary["episodes"] == 2 and summary["tasks"]["reach"]["sources"] == {"expert": 1, "policy": 1}


def test_append_chunks_and_feature_checks(tmp_path):
    with EpisodeWriter(tmp_path, chunk_size=2) as w:
        for s in range(3):
            w.write_episode(toy_episode(s).arrays, "reach", "go")
    with EpisodeWriter(tmp_path) as w:  # reopening continues the numbering
        meta = w.write_episode(toy_episode(3).arrays, "reach", "go")
        assert meta.episode_index == 3
        with pytest.raises(DatasetError, match="observation.images.top"):
            w.write_episode(toy_episode(4, image_size=8).arrays, "reach", "go")
        with pytest.raises(DatasetError, match="unknown episode source"):
            w.write_episode(toy_episode(5).arrays, "reach", "go", source="robot")
    data = EpisodeDataset(tmp_path)
    assert [e.file for e in data.episodes] == [
        "data/chunk-000/episode_000000.npz",
        "data/chunk-000/episode_000001.npz",
        "data/chunk-001/episode_000002.npz",
        "data/chunk-001/episode_000003.npz",
    ]
    assert data.verify() == []


def test_one_writer_at_a_time(tmp_path):
    with EpisodeWriter(tmp_path), pytest.raises(DatasetError, match="another writer"):
        EpisodeWriter(tmp_path)


def test_truncated_and_corrupt_files_are_named_and_rest_readable(tmp_path):
    with EpisodeWriter(tmp_path) as w:
        for s in range(4):
            w.write_episode(toy_episode(s).arrays, "reach", "go")
    data = EpisodeDataset(tmp_path)
    f1 = tmp_path / data.episodes[1].file
    f1.write_bytes(f1.read_bytes()[:-50])  # truncated
    f2 = tmp_path / data.episodes[2].file
    raw = bytearray(f2.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 8] = bytes(b ^ 0xFF for b in raw[mid : mid + 8])  # same size, bytes flipped
    f2.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"episode_000001\.npz.*truncated"):
        data.load(1)
    with pytest.raises(DatasetError, match=r"episode_000002\.npz.*corrupt"):
        data.load(2)
    assert data.load(0)["action"].shape[1] == 2 and data.load(3)["action"].shape[1] == 2
    problems = data.verify()
    assert len(problems) == 2


def test_missing_or_foreign_dataset(tmp_path):
    with pytest.raises(DatasetError, match="missing meta/info.json"):
        EpisodeDataset(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="info.json: unreadable"):
        EpisodeDataset(tmp_path)


def test_torn_index_line_is_ignored_then_cut(tmp_path):
    with EpisodeWriter(tmp_path) as w:
        for s in range(2):
            w.write_episode(toy_episode(s).arrays, "reach", "go")
    index = tmp_path / "meta" / "episodes.jsonl"
    with open(index, "a") as f:
        f.write('{"episode_index": 2, "file": "data/ch')  # a write cut short
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert len(EpisodeDataset(tmp_path)) == 2
    with pytest.warns(UserWarning), EpisodeWriter(tmp_path) as w:
        w.write_episode(toy_episode(2).arrays, "reach", "go")
    data = EpisodeDataset(tmp_path)
    assert [e.episode_index for e in data.episodes] == [0, 1, 2] and data.problems == []


WRITER_SCRIPT = """
import sys, time
import numpy as np
from vlarl.data import EpisodeWriter
root, n_full = sys.argv[1], int(sys.argv[2])
w = EpisodeWriter(root)
rng = np.random.default_rng(0)
def obs():
    return {"state": rng.normal(size=3).astype(np.float32),
            "pixels": {"cam": rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)}}
for ep in range(n_full + 1):
    w.start_episode(obs(), "task", "do it")
    for t in range(20):
        w.add_step(rng.uniform(-1, 1, 2), 0.0, obs(), False, t == 19, False)
        if ep == n_full and t == 10:
            print("MID-EPISODE", flush=True)
            time.sleep(60)  # killed here
    w.end_episode()
    print("COMMITTED", ep, flush=True)
"""


def test_writer_killed_mid_episode_loses_only_that_episode(tmp_path):
    root = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(root), "3"], stdout=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line.strip())
        if line.startswith("MID-EPISODE"):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lines[-1] == "MID-EPISODE", lines
    data = EpisodeDataset(root)
    assert len(data) == 3
    assert data.verify() == []
    assert all(data.load(i)["action"].shape == (20, 2) for i in range(3))
    with EpisodeWriter(root) as w:  # the lock died with the process; writing continues
        w.write_episode(data.load(0), "task", "do it")
    assert len(EpisodeDataset(root)) == 4


def test_nothing_already_on_disk_is_overwritten(tmp_path):
    """An episode file whose index line never landed (a crash between the two) is kept."""
    with EpisodeWriter(tmp_path) as w:
        w.write_episode(toy_episode(0).arrays, "reach", "go")
        w.write_episode(toy_episode(1).arrays, "reach", "go")
    index = tmp_path / "meta" / "episodes.jsonl"
    lines = index.read_text().splitlines()
    index.write_text(lines[0] + "\n")  # as if the crash came before the second line
    orphan = tmp_path / json.loads(lines[1])["file"]
    before = orphan.read_bytes()
    with EpisodeWriter(tmp_path) as w:
        meta = w.write_episode(toy_episode(2).arrays, "reach", "go")
    assert meta.episode_index == 2 and orphan.read_bytes() == before


def test_collect_is_the_same_with_one_or_two_workers(tmp_path):
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect

    env = EnvConfig(name="toy/reach", obs_mode="pixels", image_size=16)
    one = collect(CollectConfig(env=env, episodes=4, noise=0.3, workers=1, out=str(tmp_path / "a")), progress=False)
    two = collect(CollectConfig(env=env, episodes=4, noise=0.3, workers=2, out=str(tmp_path / "b")), progress=False)
    assert one["written"] == two["written"] == 4
    a, b = EpisodeDataset(tmp_path / "a"), EpisodeDataset(tmp_path / "b")
    for i in range(4):
        for key, value in a.load(i).items():
            np.testing.assert_array_equal(value, b.load(i)[key])
    # Run again with a larger target: it continues, with the next seeds.
    more = collect(CollectConfig(env=env, episodes=6, noise=0.3, workers=1, out=str(tmp_path / "a")), progress=False)
    assert more["already_there"] == 4 and more["collected"] == 2
    assert [e.extra["seed"] for e in EpisodeDataset(tmp_path / "a").episodes] == list(range(6))
