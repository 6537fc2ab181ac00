"""LeRobotDataset interop: export to the v2.1 layout, import back (lossless with images),
videos, datasets without our extras, and LeRobot itself loading our export when installed."""

import json

import numpy as np
import pytest

from vlarl.data import EpisodeDataset, EpisodeWriter
from vlarl.envs import ScriptedExpert, make
from vlarl.errors import DatasetError
from vlarl.eval import run_episode

pytest.importorskip("pyarrow")


def _dataset(path, episodes=3, image_size=16):
    env = make("toy/reach", obs_mode="state+pixels", image_size=image_size)
    with EpisodeWriter(path, fps=15) as w:
        for seed in range(episodes):
            result = run_episode(env, ScriptedExpert(env, noise=0.3, seed=seed), seed=seed)
            w.write_episode(result.arrays, "reach", "move the red dot" if seed % 2 else "reach the target",
                            source="expert" if seed else "policy", operator=f"op{seed}")
    env.close()
    return EpisodeDataset(path)


def test_export_then_import_is_lossless_and_the_layout_is_lerobots(tmp_path):
    import pyarrow.parquet as pq

    from vlarl.data.lerobot import export_lerobot, import_lerobot

    src = _dataset(tmp_path / "src")
    out = export_lerobot(tmp_path / "src", tmp_path / "lr")
    info = json.loads((tmp_path / "lr" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == 15 and info["total_episodes"] == 3
    assert info["total_frames"] == out["frames"] == sum(e.length for e in src.episodes)
    assert info["features"]["observation.images.top"]["dtype"] == "image" and info["total_tasks"] == 2
    table = pq.read_table(tmp_path / "lr" / "data" / "chunk-000" / "episode_000001.parquet").to_pydict()
    n0 = src.episodes[0].length
    assert table["index"][0] == n0 and table["frame_index"][:2] == [0, 1] and table["episode_index"][0] == 1
    assert table["timestamp"][1] == pytest.approx(1 / 15) and table["next.done"][-1] and not table["next.done"][0]
    tasks = [json.loads(line) for line in (tmp_path / "lr" / "meta" / "tasks.jsonl").read_text().splitlines()]
    assert {t["task"] for t in tasks} == {"reach the target", "move the red dot"}
    stats = json.loads((tmp_path / "lr" / "meta" / "episodes_stats.jsonl").read_text().splitlines()[0])["stats"]
    ep0 = src.load(0)
    assert np.allclose(stats["action"]["mean"], ep0["action"].mean(0)) and len(stats["observation.images.top"]["mean"]) == 3

    back = import_lerobot(tmp_path / "lr", tmp_path / "back")
    assert back["episodes"] == 3
    again = EpisodeDataset(tmp_path / "back")
    for i in range(3):
        a, b = src.load(i), again.load(i)
        assert set(a) == set(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        ea, eb = src.episodes[i], again.episodes[i]
        assert (ea.task, ea.instruction, ea.source, ea.success, ea.extra) == (eb.task, eb.instruction, eb.source,
                                                                              eb.success, eb.extra)
    with pytest.raises(DatasetError, match="not empty"):
        export_lerobot(tmp_path / "src", tmp_path / "lr")


def test_import_without_our_extras_and_with_videos(tmp_path):
    import shutil

    from vlarl.data.lerobot import export_lerobot, import_lerobot

    src = _dataset(tmp_path / "src", episodes=2, image_size=32)
    export_lerobot(tmp_path / "src", tmp_path / "lr")
    shutil.rmtree(tmp_path / "lr" / "vlarl")  # as a dataset LeRobot wrote: no final observations
    lines = (tmp_path / "lr" / "meta" / "episodes.jsonl").read_text().splitlines()
    stripped = [{k: v for k, v in json.loads(line).items() if k != "vlarl"} for line in lines]
    (tmp_path / "lr" / "meta" / "episodes.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stripped))
    import_lerobot(tmp_path / "lr", tmp_path / "back", task="reach")
    back = EpisodeDataset(tmp_path / "back")
    a, b = src.load(0), back.load(0)
    np.testing.assert_array_equal(b["observation.state"][-1], b["observation.state"][-2])  # the last one repeated
    np.testing.assert_array_equal(a["observation.state"][:-1], b["observation.state"][:-1])
    assert back.episodes[0].source == "human" and back.episodes[0].task == "reach"

    export_lerobot(tmp_path / "src", tmp_path / "vid", video=True)
    info = json.loads((tmp_path / "vid" / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.top"]["dtype"] == "video" and info["total_videos"] == 2
    import_lerobot(tmp_path / "vid", tmp_path / "vback")
    v = EpisodeDataset(tmp_path / "vback").load(1)
    ref = src.load(1)
    assert v["observation.images.top"].shape == ref["observation.images.top"].shape
    # H.264 is lossy: close, not equal
    assert np.abs(v["observation.images.top"].astype(int) - ref["observation.images.top"]).mean() < 8


def test_cli_exports_and_imports(tmp_path, capsys):
    from vlarl.cli import main

    src = _dataset(tmp_path / "src", episodes=2)
    assert main(["dataset", "export", "--format", "lerobot", str(tmp_path / "src"), str(tmp_path / "lr")]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
    assert main(["dataset", "import", "--format", "lerobot", str(tmp_path / "lr"), str(tmp_path / "back")]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == src.num_frames
    assert main(["dataset", "import", "--format", "lerobot", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "info.json" in capsys.readouterr().err


def test_import_names_what_is_wrong(tmp_path):
    from vlarl.data.lerobot import import_lerobot

    with pytest.raises(DatasetError, match="info.json"):
        import_lerobot(tmp_path, tmp_path / "out")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "features": {}}))
    with pytest.raises(DatasetError, match="v3.0"):
        import_lerobot(tmp_path, tmp_path / "out")


# LeRobot 0.3.x (the last that reads v2.1) pins torch<2.8 and gymnasium<1, so it rarely shares
# this environment: VLARL_LEROBOT_PYTHON may name an interpreter that has it.
LOAD_WITH_LEROBOT = """
import json, sys
import numpy as np, torch
try:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
except ImportError:
    from lerobot.common.datasets.lerobot_dataset import LeRobotDataset
root, video = sys.argv[1], sys.argv[2] == "video"
ds = LeRobotDataset("local/vlarl-test", root=root, **({"video_backend": "pyav"} if video else {}),
                    delta_timestamps={"action": [0, 1 / 15]})
items = [ds[i] for i in range(len(ds))]
batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
print(json.dumps({"episodes": ds.num_episodes, "frames": ds.num_frames, "batch": list(batch["action"].shape),
                  "action": [it["action"].tolist() for it in items], "pad": [it["action_is_pad"].tolist() for it in items],
                  "state": [it["observation.state"].tolist() for it in items], "task": [it["task"] for it in items],
                  "image": [it["observation.images.top"].numpy().transpose(1, 2, 0).tolist() for it in items]}))
"""


def _lerobot_python():
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec("lerobot") is not None:
        return sys.executable
    python = os.environ.get("VLARL_LEROBOT_PYTHON")
    if not python:
        pytest.skip("lerobot is not installed (set VLARL_LEROBOT_PYTHON to an interpreter that has it)")
    return python


@pytest.mark.parametrize("video", [False, True], ids=["png", "video"])
def test_lerobot_loads_our_export(tmp_path, video):
    import subprocess

    from vlarl.data.lerobot import export_lerobot

    python = _lerobot_python()
    src = _dataset(tmp_path / "src", episodes=2)
    export_lerobot(tmp_path / "src", tmp_path / "lr", video=video)
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITH_LEROBOT)
    done = subprocess.run([python, str(script), str(tmp_path / "lr"), "video" if video else "png"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["episodes"] == 2 and got["frames"] == sum(e.length for e in src.episodes) and got["batch"][0] == 4
    i = 0
    for e, meta in enumerate(src.episodes):
        ep = src.load(e)
        for t in range(meta.length):  # every frame, in order; the action window pads past the episode's end
            nxt = min(t + 1, meta.length - 1)
            np.testing.assert_allclose(got["action"][i], ep["action"][[t, nxt]], rtol=0, atol=1e-6)
            assert got["pad"][i] == [False, t + 1 >= meta.length]
            np.testing.assert_allclose(got["state"][i], ep["observation.state"][t], rtol=0, atol=1e-6)
            assert got["task"][i] == meta.instruction
            image = np.asarray(got["image"][i]) * 255
            error = np.abs(image - ep["observation.images.top"][t]).mean()
            assert error < (8 if video else 1e-3), (e, t, error)  # H.264 is lossy; PNG is not
            i += 1
