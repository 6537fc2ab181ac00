import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")

import pytest


@pytest.fixture
def close_after():
    """Collects envs and closes them at the end of the test (EGL contexts must be freed)."""
    envs = []
    yield envs.append
    for env in envs:
        env.close()
