import numpy as np
import pytest

from vlarl.data.replay import ReplayBuffer, sample_mixed
from vlarl.errors import VlarlError


def obs(i, cams=True):
    o = {"state": np.full(2, i, np.float32)}
    if cams:
        o["pixels"] = {"cam": np.full((4, 4, 3), i % 256, np.uint8)}
    return o


def fill(buf, episodes, length, start=0):
    """Episodes whose observations count up: o_t has value start + running frame number."""
    v = start
    for _ in range(episodes):
        buf.start_episode(obs(v))
        for t in range(length):
            v += 1
            buf.add(np.full(1, v, np.float32), float(v), obs(v), terminated=t == length - 1)
        v += 1
    return v


def check_transitions(buf):
    idx = np.flatnonzero(buf.valid)
    b = buf.gather(idx)
    # every sampled transition's next observation is the frame after it, never a copy
    np.testing.assert_array_equal(b["next_state"][:, 0], b["state"][:, 0] + 1)
    np.testing.assert_array_equal(b["action"][:, 0], b["next_state"][:, 0])
    np.testing.assert_array_equal(b["next_pixels"]["cam"][:, 0, 0, 0], (b["state"][:, 0] + 1) % 256)


def test_episode_boundaries_and_wrap_around():
    buf = ReplayBuffer(10, 2, 1, {"cam": (4, 4, 3)})
    fill(buf, episodes=2, length=3)  # 8 frames, 6 transitions
    assert len(buf) == 6
    assert not buf.valid[3] and not buf.valid[7]  # an episode's last frame starts no transition
    check_transitions(buf)
    fill(buf, episodes=2, length=3, start=100)  # 8 more frames: wraps, overwriting the oldest
    assert buf.ptr == 6 and buf.frames == 16
    check_transitions(buf)
    # New episodes fill slots 8, 9, 0, 1 and 2..5; slots 6, 7 keep the old second episode's
    # last transition (6 -> 7), intact. 3 + 3 new transitions, 1 old; 3 of them terminal.
    assert sorted(np.flatnonzero(buf.valid).tolist()) == [0, 2, 3, 4, 6, 8, 9]
    assert buf.terminated[np.flatnonzero(buf.valid)].sum() == 3


def test_sampling_only_valid_and_in_one_call():
    buf = ReplayBuffer(50, 2, 1, {"cam": (4, 4, 3)}, seed=0)
    fill(buf, episodes=3, length=5)
    sample = buf.sample(8, n_batches=4)
    assert sample["state"].shape == (4, 8, 2) and sample["pixels"]["cam"].shape == (4, 8, 4, 4, 3)
    np.testing.assert_array_equal(sample["next_state"][..., 0], sample["state"][..., 0] + 1)
    with pytest.raises(VlarlError, match="empty"):
        ReplayBuffer(5, 2, 1).sample(1)


def test_mixed_batches_have_the_exact_offline_share():
    on = ReplayBuffer(100, 2, 1, seed=0)
    off = ReplayBuffer(100, 2, 1, seed=1)
    fill_state = lambda b, start: fill(b, 4, 5, start)  # noqa: E731
    for b in (on, off):
        b.cameras = {}
        b.pixels = {}
    on_end = fill_state(on, 0)
    fill_state(off, 1000)
    batch = sample_mixed(on, off, batch_size=10, n_batches=3, offline_ratio=0.3)
    from_offline = batch["state"][..., 0] >= 1000
    assert batch["state"].shape == (3, 10, 2)
    assert from_offline.sum(axis=1).tolist() == [3, 3, 3]
    assert (batch["state"][~from_offline][:, 0] < on_end).all()
    assert sample_mixed(on, None, 10, 2, 0.5)["state"].shape == (2, 10, 2)


def test_pixel_transition_costs_about_one_image():
    buf = ReplayBuffer(1000, 4, 4, {"corner": (84, 84, 3)})
    image = 84 * 84 * 3
    ratio = buf.nbytes / buf.capacity / image
    assert ratio <= 1.1, ratio


def test_memmap_and_state_dict_round_trip(tmp_path):
    buf = ReplayBuffer(20, 2, 1, {"cam": (4, 4, 3)}, memmap_dir=tmp_path / "mm", seed=3)
    fill(buf, 2, 4)
    assert (tmp_path / "mm" / "pixels_cam.npy").exists()
    sd = buf.state_dict()
    copy = ReplayBuffer(20, 2, 1, {"cam": (4, 4, 3)}, memmap_dir=tmp_path / "mm")  # a resume: the same files
    copy.load_state_dict(sd)
    np.testing.assert_array_equal(copy.sample_indices(16), buf.sample_indices(16))
    assert copy.ptr == buf.ptr and len(copy) == len(buf)


def test_from_dataset_keeps_transitions(tmp_path):
    from vlarl.recipes.collect import CollectConfig, EnvConfig, collect

    collect(CollectConfig(env=EnvConfig(name="toy/reach", obs_mode="state+pixels", image_size=8), episodes=3,
                          out=str(tmp_path / "d")), progress=False)
    from vlarl.data import EpisodeDataset

    data = EpisodeDataset(tmp_path / "d")
    buf = ReplayBuffer.from_dataset(tmp_path / "d")
    assert len(buf) == data.num_frames and buf.cameras == {"top": (8, 8, 3)}
    ep = data.load(0)
    b = buf.gather(np.arange(len(ep["action"])))
    np.testing.assert_array_equal(b["next_state"], ep["observation.state"][1:])
    np.testing.assert_array_equal(b["action"], ep["action"])
