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


def _lerobot_dataset_module():
    try:  # lerobot >= 0.3
        import lerobot.datasets.lerobot_dataset as module
    except ImportError:
        module = pytest.importorskip("lerobot.common.datasets.lerobot_dataset")
    return module


def test_lerobot_loads_our_export(tmp_path):
    lerobot_dataset = _lerobot_dataset_module()
    from vlarl.data.lerobot import export_lerobot

    src = _dataset(tmp_path / "src", episodes=2)
    export_lerobot(tmp_path / "src", tmp_path / "lr")
    ds = lerobot_dataset.LeRobotDataset("local/vlarl-test", root=tmp_path / "lr")
    assert ds.num_episodes == 2 and ds.num_frames == sum(e.length for e in src.episodes)
    item = ds[0]
    np.testing.assert_allclose(item["action"].numpy(), src.load(0)["action"][0])
