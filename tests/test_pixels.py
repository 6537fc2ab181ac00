"""Learning from cameras: frozen-encoder tokens cached once per frame, the heads that read them,
the pixel configs' observations, and replay checkpoints that hold only what was filled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlarl.algos.sac import SACAgent, SACConfig, SpatialEmbedding, to_torch
from vlarl.data.augment import random_grid_shift
from vlarl.data.replay import ReplayBuffer
from vlarl.errors import VlarlError

CAMS = {"front": (64, 64, 3), "wrist": (64, 64, 3)}


def _agent(**kw) -> SACAgent:
    torch.manual_seed(0)
    cfg = SACConfig(ensemble=2, utd=2, batch_size=8, encoder="efficientnet-lite0", spatial_kernels=4, **kw)
    return SACAgent(cfg, 5, 3, CAMS)


def _frames(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, (n, *s), dtype=np.uint8) for c, s in CAMS.items()}


def test_spatial_embedding_is_a_learned_weighted_sum_of_each_channel_over_the_grid():
    torch.manual_seed(0)
    embed = SpatialEmbedding(channels=6, cells=4, kernels=3)
    maps = torch.randn(5, 6, 4)  # (B, C, N)
    out = embed(maps)
    expected = torch.einsum("bcn,cnk->bck", maps, embed.kernel).flatten(1)  # (B, C * K), channel-major
    assert out.shape == (5, 18)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    torch.testing.assert_close(embed.kernel.grad, maps.sum(0)[..., None].expand(6, 4, 3))


@pytest.mark.parametrize("pool", [1, 2])
def test_cached_tokens_give_the_features_of_the_frames(pool):
    agent = _agent(feature_pool=pool)
    encoder = agent.critic.pixels.frame_encoder()
    frames = _frames(3)
    tokens = encoder.encode(frames)
    cells = (64 // 16) ** 2 // pool ** 2
    assert {c: t.shape for c, t in tokens.items()} == {c: (3, 112, cells) for c in CAMS}
    assert all(t.dtype == np.float16 for t in tokens.values())
    assert encoder.shapes == {c: (112, cells) for c in CAMS}
    state = torch.randn(3, 5)
    with torch.no_grad():
        from_frames = agent.critic.features({"state": state, "pixels": {c: torch.from_numpy(v) for c, v in frames.items()}})
        from_cache = agent.critic.features({"state": state, "features": {c: torch.from_numpy(v) for c, v in tokens.items()}})
    torch.testing.assert_close(from_cache, from_frames, atol=2e-3, rtol=1e-2)  # float16 storage
    one = encoder.encode({c: v[1] for c, v in frames.items()})  # a single frame, as an actor encodes it
    np.testing.assert_allclose(one["front"].astype(np.float32), tokens["front"][1].astype(np.float32), atol=1e-2)


def test_a_trained_encoder_caches_nothing():
    cfg = SACConfig(ensemble=2, encoder="conv")
    agent = SACAgent(cfg, 5, 3, CAMS)
    assert agent.critic.pixels.frame_encoder() is None


def test_the_learner_trains_on_cached_tokens_and_never_runs_the_encoder(monkeypatch):
    agent = _agent()
    encoder = agent.critic.pixels.frame_encoder()
    buf = ReplayBuffer(64, 5, 3, None, features=encoder.shapes, seed=0)
    frames = _frames(21, seed=1)
    tokens = encoder.encode(frames)
    buf.start_episode({"state": np.zeros(5, np.float32), "features": {c: v[0] for c, v in tokens.items()}})
    for t in range(20):
        buf.add(np.zeros(3, np.float32), float(t == 19), {"state": np.full(5, t, np.float32),
                "features": {c: v[t + 1] for c, v in tokens.items()}}, t == 19)
    assert buf.pixels == {} and buf.bytes_per_frame < 2 * 112 * 16 * 2 + 64
    from vlarl.algos.sac import SACLearner

    learner = SACLearner(agent)

    def no_encoding(*_a, **_k):
        raise AssertionError("the frozen encoder ran on a minibatch")

    monkeypatch.setattr(agent.critic.pixels.encoder, "forward", no_encoding)
    monkeypatch.setattr(agent.target_critic.pixels.encoder, "forward", no_encoding)
    before = agent.critic.pixels.spatial["front"].kernel.detach().clone()
    for augment in (False, True):
        batches = to_torch(buf.sample(8, 2), torch.device("cpu"), augment, torch.Generator().manual_seed(0), 1)
        assert batches[0]["obs"]["features"]["front"].shape == (8, 112, 16)
        leaves = [t for b in batches for o in ("obs", "next_obs") for t in (b[o]["state"], *b[o]["features"].values())]
        assert all(t.shape[0] == 8 for t in leaves)  # batch first: a data-parallel learner shards dim 0
        info = learner.update(batches)
        assert batches[0]["obs"]["maps"]["front"].shape == (8, 112, 16)  # laid out once, read by every head
        assert torch.isfinite(info["critic_loss"])
    assert not torch.equal(before, agent.critic.pixels.spatial["front"].kernel)


def test_grid_shift_moves_each_grid_by_at_most_pad_cells():
    maps = torch.arange(2 * 3 * 16, dtype=torch.float32).reshape(2, 3, 16)
    assert torch.equal(random_grid_shift(maps, 0), maps)
    out = random_grid_shift(maps, 1, torch.Generator().manual_seed(0))
    assert out.shape == maps.shape
    grid, shifted = maps.reshape(2, 3, 4, 4), out.reshape(2, 3, 4, 4)
    # the centre 2 x 2 of a shifted 4 x 4 grid is a window of the original one
    centre = shifted[:, :, 1:3, 1:3]
    found = [[any(torch.equal(centre[b], grid[b, :, i:i + 2, j:j + 2]) for i in range(3) for j in range(3))]
             for b in range(2)]
    assert all(f[0] for f in found)
    with pytest.raises(ValueError, match="square"):
        random_grid_shift(torch.zeros(1, 2, 5), 1)


def test_actor_weights_leave_out_the_frozen_encoder():
    from vlarl.recipes.hil_serl import _acting_state

    state = _acting_state(_agent())
    assert state and not any(".encoder." in k for k in state)
    assert any(k.startswith("critic.pixels.spatial.") for k in state)


def test_episodes_with_tokens_are_checked_on_arrival():
    from vlarl.runtime.transport import EpisodeSpec, validate_episode
    from vlarl.runtime.wire import WireError

    spec = EpisodeSpec(5, 3, None, 10, features={"front": (112, 16)})
    t = 4
    body = {"arrays": {"observation.state": np.zeros((t + 1, 5), np.float32), "action": np.zeros((t, 3), np.float32),
                       "reward": np.zeros(t, np.float32), "terminated": np.zeros(t, bool), "truncated": np.zeros(t, bool),
                       "is_success": np.zeros(t, bool),
                       "observation.features.front": np.zeros((t + 1, 112, 16), np.float16)},
            "intervened": np.zeros(t, bool), "success": False, "true_success": False, "weights_version": 0}
    assert validate_episode(body, spec)["arrays"] is body["arrays"]
    assert spec.max_bytes() > 11 * 112 * 16 * 2
    bad = {**body, "arrays": {**body["arrays"], "observation.features.front": np.zeros((t + 1, 112, 16), np.float32)}}
    with pytest.raises(WireError, match="observation.features.front"):
        validate_episode(bad, spec)
    nan = np.zeros((t + 1, 112, 16), np.float16)
    nan[0, 0, 0] = np.nan
    with pytest.raises(WireError, match="non-finite"):
        validate_episode({**body, "arrays": {**body["arrays"], "observation.features.front": nan}}, spec)


@pytest.mark.parametrize("config, recipe", [("configs/hil-serl-pick-cube.yaml", "hil-serl"),
                                            ("configs/conrft-pick-cube.yaml", "conrft")])
def test_pixel_configs_see_cameras_and_proprio_only(config, recipe):
    """What the actor and critic read under the shipped configs: two 128 px cameras' cached tokens
    and the 18-d proprio; no cube position anywhere."""
    from vlarl.recipes.conrft import ConRFTRecipeConfig
    from vlarl.recipes.hil_serl import HILSERLConfig, build_actor
    from vlarl.runtime import load_config

    cls = HILSERLConfig if recipe == "hil-serl" else ConRFTRecipeConfig
    cfg = load_config(cls, config, ["reward=env", "human=none"])
    parts = build_actor(cfg, 0)
    try:
        obs, _ = parts.env.reset(seed=0)
        assert set(obs) == {"state", "features"}
        assert obs["state"].shape == (18,)
        assert {c: v.shape for c, v in obs["features"].items()} == {"front": (112, 16), "wrist": (112, 16)}
        base = parts.env.unwrapped
        assert base.obs_mode == "pixels" and base.image_size == 128
        cube = base.privileged_state()[-3:]
        assert not np.isclose(obs["state"][:, None], cube[None]).all(axis=0).any()  # no cube coordinate leaks
        action = parts.act(obs)
        assert action.shape == parts.env.action_space.shape
    finally:
        parts.env.close()


# --- replay checkpoints ------------------------------------------------------------------------
def _fill(buf: ReplayBuffer, episodes: int, length: int, start: int = 0) -> None:
    for e in range(episodes):
        v = start + e * 100
        buf.start_episode({"state": np.full(2, v, np.float32), "pixels": {"cam": np.full((4, 4, 3), v % 256, np.uint8)}})
        for t in range(length):
            buf.add(np.full(1, t, np.float32), 1.0, {"state": np.full(2, v + t + 1, np.float32),
                    "pixels": {"cam": np.full((4, 4, 3), (v + t + 1) % 256, np.uint8)}}, False, truncated=t == length - 1)


def test_a_checkpoint_holds_only_the_filled_slots(tmp_path):
    from vlarl.runtime.statefile import load_state, save_state

    buf = ReplayBuffer(10_000, 2, 1, {"cam": (4, 4, 3)}, seed=3)
    _fill(buf, 3, 5)
    sd = buf.state_dict()
    assert sd["filled"] == 18 and sd["slots"]["pixels.cam"].shape == (18, 4, 4, 3)
    save_state(tmp_path / "s.json", {"buffer": sd})
    assert (tmp_path / "s.safetensors").stat().st_size < 10_000 * 4 * 4 * 3 / 10  # not the 10k slots
    copy = ReplayBuffer(10_000, 2, 1, {"cam": (4, 4, 3)})
    copy.load_state_dict(load_state(tmp_path / "s.json")["buffer"])
    assert len(copy) == len(buf) == 15 and copy.ptr == buf.ptr
    np.testing.assert_array_equal(copy.sample_indices(32), buf.sample_indices(32))
    idx = np.arange(15)
    for key in ("state", "next_state", "action"):
        np.testing.assert_array_equal(copy.gather(idx)[key], buf.gather(idx)[key])
    with pytest.raises(VlarlError, match="10000 slots"):
        ReplayBuffer(50, 2, 1, {"cam": (4, 4, 3)}).load_state_dict(sd)
    with pytest.raises(VlarlError, match="holds"):
        ReplayBuffer(10_000, 2, 1, None).load_state_dict(sd)


def test_a_memmap_buffer_resumes_from_its_files_less_what_was_written_after(tmp_path):
    mm = tmp_path / "mm"
    buf = ReplayBuffer(40, 2, 1, {"cam": (4, 4, 3)}, memmap_dir=mm, seed=3)
    _fill(buf, 2, 5)
    sd = buf.state_dict()
    assert "slots" not in sd and sd["memmap"]["writes"] == 12  # no frame copied into the checkpoint
    _fill(buf, 1, 5, start=1000)  # written after the checkpoint, then the process dies
    del buf
    resumed = ReplayBuffer(40, 2, 1, {"cam": (4, 4, 3)}, memmap_dir=mm, seed=3)
    resumed.load_state_dict(sd)
    assert len(resumed) == 10 and resumed.ptr == 12
    np.testing.assert_array_equal(resumed.state[:12, 0], [0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105])
    assert not resumed.valid[12:].any()
    _fill(resumed, 1, 3, start=2000)  # the run goes on where the checkpoint left off
    assert resumed.state[12, 0] == 2000 and len(resumed) == 13
    with pytest.raises(VlarlError, match="memmap_dir"):
        ReplayBuffer(40, 2, 1, {"cam": (4, 4, 3)}).load_state_dict(sd)


def test_a_memmap_checkpoint_whose_frames_were_overwritten_is_refused(tmp_path):
    mm = tmp_path / "mm"
    buf = ReplayBuffer(20, 2, 1, {"cam": (4, 4, 3)}, memmap_dir=mm)
    _fill(buf, 1, 5)
    sd = buf.state_dict()
    _fill(buf, 4, 5, start=500)  # 24 frames after the checkpoint: the buffer wrapped past it
    with pytest.raises(VlarlError, match="written after this checkpoint"):
        ReplayBuffer(20, 2, 1, {"cam": (4, 4, 3)}, memmap_dir=mm).load_state_dict(sd)


def test_the_rlpd_pixel_config_sees_cameras_and_proprio_only():
    from vlarl.envs import make
    from vlarl.envs.spaces import env_dims
    from vlarl.envs.wrappers import EncodeFrames
    from vlarl.recipes.rlpd import RLPDConfig
    from vlarl.runtime import load_config

    cfg = load_config(RLPDConfig, "configs/rlpd-metaworld-pixels.yaml")
    env = make(cfg.env.name, **cfg.env.kwargs())
    try:
        state_dim, action_dim, cameras = env_dims(env)
        assert state_dim == 4 and cameras == {"corner": (128, 128, 3), "gripperPOV": (128, 128, 3)}
        agent = SACAgent(cfg.sac, state_dim, action_dim, cameras)
        wrapped = EncodeFrames(env, agent.critic.pixels.frame_encoder(), keep_frames=False)
        obs, _ = wrapped.reset(seed=0)
        assert set(obs) == {"state", "features"} and set(obs["features"]) == set(cameras)
        assert set(wrapped.observation_space.spaces) == {"state", "features"}
    finally:
        env.close()


def test_the_flatten_head_reads_tokens_in_their_original_order():
    """A conv encoder's flatten + projection sees token-major features, as before the cache (so
    checkpoints of earlier pixel runs mean what they meant)."""
    from vlarl.algos.sac import PixelFeatures

    torch.manual_seed(0)
    head = PixelFeatures("conv", {"top": (32, 32, 3)}, 6)
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        tokens = head.encoder(frames)  # (B, N, C)
        expected = head.proj(tokens.flatten(1))
        torch.testing.assert_close(head({"pixels": {"top": frames}}), expected)


def test_the_demo_refuses_a_run_directory_holding_another_demo(tmp_path):
    """An earlier 2-D reach demo in runs/demo is named, not continued with the pick-cube settings
    (which would not fit its checkpoint), and nothing there is rewritten."""
    from vlarl.recipes.demo import DemoConfig, run_demo
    from vlarl.runtime import load_config, save_config

    reach = load_config(DemoConfig, "configs/demo-reach.yaml", [f"run_dir={tmp_path / 'demo'}"])
    (tmp_path / "demo" / "hil-serl").mkdir(parents=True)
    save_config(reach.hil_serl, tmp_path / "demo" / "hil-serl" / "config.yaml")
    before = (tmp_path / "demo" / "hil-serl" / "config.yaml").read_text()
    with pytest.raises(VlarlError, match="holds a demo of toy/reach from state"):
        run_demo(DemoConfig(run_dir=str(tmp_path / "demo")), progress=False)
    assert (tmp_path / "demo" / "hil-serl" / "config.yaml").read_text() == before
    assert not (tmp_path / "demo" / "config.yaml").exists()
