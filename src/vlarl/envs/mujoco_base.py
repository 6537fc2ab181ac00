"""What the MuJoCo-backed envs share: the model handle (for twins) and camera rendering."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vlarl.envs.base import VlarlEnv
from vlarl.envs.rendering import CameraRenderer


class MujocoEnv(VlarlEnv):
    """A ``VlarlEnv`` over one MuJoCo model and data.

    Subclasses call ``_init_mujoco`` after ``VlarlEnv.__init__``; cameras are rendered with
    one ``CameraRenderer``, created on first use and closed by ``close``.
    """

    def _init_mujoco(
        self,
        model,
        data,
        camera_names: Mapping[str, str],
        fast_render: bool = True,
        flip: Sequence[str] = (),
    ) -> None:
        """``camera_names`` maps the names users pass to the model's camera names."""
        self._model, self._data = model, data
        self._camera_names = dict(camera_names)
        self._fast_render, self._flip = fast_render, tuple(flip)
        self._renderer: CameraRenderer | None = None
        if "pixels" in self.obs_mode:
            self._render_cameras()  # fail now, not mid-run, on an unknown camera or a broken GL

    def _render_cameras(self) -> dict[str, np.ndarray]:
        if self._renderer is None:
            self._renderer = CameraRenderer(
                self._model,
                [self._camera_names.get(c, c) for c in self.cameras],
                self.image_size,
                fast=self._fast_render,
                flip=self._flip,
                where=self.spec_name,
            )
        images = self._renderer.render(self._data)
        return {cam: images[self._camera_names.get(cam, cam)] for cam in self.cameras}

    @property
    def spec_name(self) -> str:
        return f"{type(self).__name__}({self.task})"

    @property
    def mj_model(self):
        return self._model

    @property
    def mj_data(self):
        return self._data

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
