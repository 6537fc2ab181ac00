import numpy as np
import pytest

from vlarl.envs import ENV_NAMES, ScriptedExpert, TwinConfig, make, make_vec, valid_options
from vlarl.envs.instructions import METAWORLD_INSTRUCTIONS
from vlarl.errors import VlarlError
from vlarl.eval import run_episode


def check_contract(env, obs, info, with_pixels):
    assert env.observation_space.contains(obs), {k: getattr(v, "dtype", None) for k, v in obs.items()}
    assert obs["state"].dtype == np.float32
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert ("pixels" in obs) == with_pixels
    for img in obs.get("pixels", {}).values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert "is_success" in info
    assert isinstance(env.unwrapped.instruction, str) and env.unwrapped.instruction


# --- toy ----------------------------------------------------------------------------------
@pytest.mark.parametrize("obs_mode", ["state", "pixels", "state+pixels"])
def test_toy_contract(obs_mode):
    env = make("toy/reach", obs_mode=obs_mode, image_size=24)
    obs, info = env.reset(seed=0)
    check_contract(env, obs, info, "pixels" in obs_mode)
    obs, r, term, trunc, info = env.step(env.action_space.sample())
    check_contract(env, obs, info, "pixels" in obs_mode)
    assert obs["state"].shape == ((2,) if obs_mode == "pixels" else (4,))


def test_toy_image_upright_and_expert_succeeds():
    env = make("toy/reach", obs_mode="state+pixels", image_size=32)
    env.reset(seed=0)
    inner = env.unwrapped
    inner.agent = np.array([-0.9, 0.9])  # top-left corner of the square
    inner.goal = np.array([0.9, -0.9])  # bottom-right
    img = inner._render_cameras()["top"]
    assert tuple(img[1, 1]) == (230, 40, 40)  # red agent at the top-left
    assert tuple(img[-2, -2]) == (40, 200, 60)  # green goal at the bottom-right
    expert = ScriptedExpert(env)
    results = [run_episode(env, expert, seed=s, keep_arrays=False) for s in range(10)]
    assert all(r.success for r in results)
    assert all(r.length < env.unwrapped.episode_length for r in results)  # terminated on success


def test_toy_seeding_is_deterministic():
    a, b = make("toy/reach"), make("toy/reach")
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    oc, _ = b.reset(seed=8)
    assert np.array_equal(oa["state"], ob["state"]) and not np.array_equal(oa["state"], oc["state"])


def test_episode_length_truncates():
    env = make("toy/reach", episode_length=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(2, np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]


# --- names and options ----------------------------------------------------------------------
def test_all_fifty_metaworld_tasks_registered():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    expected = {f"metaworld/{k[:-3]}" for k in ALL_V3_ENVIRONMENTS}
    assert len(expected) == 50
    assert expected == {n for n in ENV_NAMES if n.startswith("metaworld/")}
    assert set(METAWORLD_INSTRUCTIONS) == {k[:-3] for k in ALL_V3_ENVIRONMENTS}
    assert len(set(METAWORLD_INSTRUCTIONS.values())) == 50  # every instruction tells its task apart


def test_unknown_env_lists_closest_first():
    with pytest.raises(VlarlError) as err:
        make("metaworld/drawer-opn")
    msg = str(err.value)
    assert "unknown env 'metaworld/drawer-opn'" in msg
    assert msg.split("valid: ")[1].startswith("metaworld/drawer-open")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(VlarlError) as err:
        make("toy/reach", image_sise=32)
    msg = str(err.value)
    assert "toy/reach" in msg and "image_sise" in msg
    assert msg.split("valid: ")[1].startswith("image_size")
    assert "twin" in valid_options("metaworld/reach")


def test_unknown_camera_is_an_error():
    with pytest.raises(VlarlError, match="unknown camera 'side'.*valid"):
        make("panda/pick-cube", obs_mode="pixels", cameras=["side"])
    with pytest.raises(VlarlError, match="unknown camera 'cornr'"):
        make("metaworld/reach", obs_mode="pixels", cameras=["cornr"])


# --- Meta-World ---------------------------------------------------------------------------
def test_metaworld_state_contract_and_expert(close_after):
    env = make("metaworld/drawer-open", obs_mode="state", episode_length=150)
    close_after(env)
    obs, info = env.reset(seed=0)
    check_contract(env, obs, info, False)
    assert obs["state"].shape == (39,)
    assert np.any(obs["state"][-3:] != 0)  # the goal is observable
    assert env.unwrapped.instruction == "open the drawer"
    result = run_episode(env, ScriptedExpert(env), seed=0, keep_arrays=False)
    assert result.success and result.length < 150


def test_metaworld_pixels_upright_and_cameras(close_after):
    env = make("metaworld/drawer-open", obs_mode="pixels", image_size=64, cameras=["corner", "gripperPOV"])
    close_after(env)
    obs, info = env.reset(seed=3)
    check_contract(env, obs, info, True)
    assert set(obs["pixels"]) == {"corner", "gripperPOV"}
    assert obs["pixels"]["corner"].shape == (64, 64, 3)
    assert obs["state"].shape == (4,)  # proprio only when the policy sees pixels
    img = obs["pixels"]["corner"].astype(int)
    table = img[..., 0] - img[..., 2] > 25  # the brown wooden table top
    # Upright, the table fills the bottom of the corner view; upside down it is at the top.
    assert table[-16:].mean() > 2 * table[:16].mean()


def test_metaworld_reset_randomises_and_seeds(close_after):
    env = make("metaworld/push")
    close_after(env)
    a, _ = env.reset(seed=1)
    b, _ = env.reset(seed=2)
    c, _ = env.reset(seed=1)
    assert not np.allclose(a["state"], b["state"]) and np.allclose(a["state"], c["state"])


def test_every_metaworld_task_builds_and_steps():
    for name in ENV_NAMES:
        if not name.startswith("metaworld/"):
            continue
        env = make(name, episode_length=2)
        obs, info = env.reset(seed=0)
        obs, r, term, trunc, info = env.step(env.unwrapped.expert_action())
        assert obs["state"].shape == (39,) and "is_success" in info, name
        env.close()


# --- Panda ----------------------------------------------------------------------------------
def test_panda_contract_cameras_and_expert(close_after):
    env = make("panda/pick-cube", obs_mode="state+pixels", image_size=64)
    close_after(env)
    obs, info = env.reset(seed=0)
    check_contract(env, obs, info, True)
    assert set(obs["pixels"]) == {"front", "wrist"}
    assert obs["state"].shape == (21,)
    assert env.action_space.shape == (4,)
    front = obs["pixels"]["front"].astype(int)
    white = (front > 170).all(axis=-1)  # the white arm reaches down from above the cube
    assert white[:32].mean() > 2 * white[32:].mean()
    results = [run_episode(env, ScriptedExpert(env), seed=s, keep_arrays=False) for s in range(3)]
    assert all(r.success for r in results)


# --- physics twins --------------------------------------------------------------------------
def test_twin_perturbs_model_deterministically(close_after):
    nominal = make("panda/pick-cube")
    cfg = TwinConfig(mass=1.5, friction=0.5, damping=2.0, actuator_gain=0.65)
    twin = make("panda/pick-cube", twin=cfg)
    close_after(nominal), close_after(twin)
    m0, m1 = nominal.unwrapped.mj_model, twin.unwrapped.mj_model
    np.testing.assert_allclose(m1.body_mass, 1.5 * m0.body_mass)
    np.testing.assert_allclose(m1.geom_friction, 0.5 * m0.geom_friction)
    np.testing.assert_allclose(m1.dof_damping, 2.0 * m0.dof_damping)
    np.testing.assert_allclose(m1.actuator_gainprm[:, 0], 0.65 * m0.actuator_gainprm[:, 0])
    assert TwinConfig.random(3) == TwinConfig.random(3) != TwinConfig.random(4)


def _trajectory(env, actions, seed=0):
    env.reset(seed=seed)
    return np.stack([env.step(a)[0]["state"] for a in actions])


def test_twin_action_delay_and_noise(close_after):
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 4).astype(np.float32) for _ in range(6)]
    nominal = make("panda/pick-cube")
    delayed = make("panda/pick-cube", twin=TwinConfig(action_delay=1))
    noisy_a = make("panda/pick-cube", twin=TwinConfig(action_noise=0.3, seed=5))
    noisy_b = make("panda/pick-cube", twin=TwinConfig(action_noise=0.3, seed=5))
    for e in (nominal, delayed, noisy_a, noisy_b):
        close_after(e)
    # A one-step delay executes (0, a0, a1, ...): the same states as the nominal env fed that.
    shifted = [np.zeros(4, np.float32)] + actions[:-1]
    np.testing.assert_allclose(_trajectory(delayed, actions), _trajectory(nominal, shifted), atol=1e-6)
    np.testing.assert_array_equal(_trajectory(noisy_a, actions), _trajectory(noisy_b, actions))
    assert not np.allclose(_trajectory(noisy_a, actions), _trajectory(nominal, actions))


def test_twin_needs_mujoco():
    with pytest.raises(VlarlError, match="no MuJoCo model"):
        make("toy/reach", twin=TwinConfig(mass=2.0))
    with pytest.raises(VlarlError, match="unknown key"):
        make("panda/pick-cube", twin={"mas": 2.0})


# --- vectorised -----------------------------------------------------------------------------
def test_make_vec_toy_processes():
    vec = make_vec("toy/reach", 2, obs_mode="pixels", image_size=16)
    try:
        obs, info = vec.reset(seed=0)
        assert obs["state"].shape == (2, 2) and obs["pixels"]["top"].shape == (2, 16, 16, 3)
        assert not np.array_equal(obs["state"][0], obs["state"][1])  # worker i gets seed + i
        obs, r, term, trunc, info = vec.step(np.zeros((2, 2), np.float32))
        assert r.shape == (2,) and "is_success" in info
        assert vec.get_attr("instruction") == ("move the red dot to the green target",) * 2
    finally:
        vec.close()


def test_make_vec_metaworld_pixels():
    vec = make_vec("metaworld/reach", 2, obs_mode="pixels", image_size=32)
    try:
        obs, _ = vec.reset(seed=0)
        assert obs["pixels"]["corner"].shape == (2, 32, 32, 3) and obs["pixels"]["corner"].dtype == np.uint8
        obs, *_ = vec.step(np.zeros((2, 4), np.float32))
        assert obs["state"].shape == (2, 4)
    finally:
        vec.close()


def test_images_survive_other_mujoco_renderers_being_freed():
    """gymnasium's MuJoCo viewer frees its GL objects whenever Python collects it; that
    must not blank the images of a vlarl env created in between."""
    import gc

    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = make("metaworld/drawer-open", obs_mode="pixels", image_size=48)
    reference = env.reset(seed=0)[0]["pixels"]["corner"]
    env.close()

    foreign = ALL_V3_ENVIRONMENTS["drawer-open-v3"](render_mode="rgb_array", camera_name="corner", width=48, height=48)
    foreign._partially_observable, foreign._freeze_rand_vec, foreign._set_task_called = False, False, True
    foreign.seeded_rand_vec = True
    foreign.seed(0)
    foreign.reset()
    foreign.render()
    foreign.close()
    env = make("metaworld/drawer-open", obs_mode="pixels", image_size=48)
    del foreign
    gc.collect()  # the foreign viewer's GL objects are freed now, after ours exist
    try:
        image = env.reset(seed=0)[0]["pixels"]["corner"]
        np.testing.assert_array_equal(image, reference)
    finally:
        env.close()
