"""Offscreen MuJoCo rendering, fast by default.

Shadows and multisampling cost most of a small image's render time and add little a policy
can use, so ``fast=True`` turns both off (a few-fold speed-up, see
benchmarks/results/env_throughput.md). One ``mujoco.Renderer`` serves every camera.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from collections.abc import Sequence

import mujoco
import numpy as np

from vlarl.errors import VlarlError, unknown


def apply_fast_render_settings(model: mujoco.MjModel) -> None:
    """No shadows, no multisampling: the cheap path for small policy images."""
    model.light_castshadow[:] = 0
    model.vis.quality.offsamples = 0


class CameraRenderer:
    """Renders named cameras of a model to upright uint8 HWC images.

    ``flip`` names the cameras whose images come out upside down (Meta-World's corner
    cameras) and are flipped vertically here, so that every image a policy sees is upright.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        cameras: Sequence[str],
        size: int,
        *,
        fast: bool = True,
        flip: Sequence[str] = (),
        where: str = "",
    ) -> None:
        valid = [model.camera(i).name for i in range(model.ncam)]
        for cam in cameras:
            if cam not in valid:
                raise VlarlError(unknown("camera", cam, valid, where))
        if fast:
            apply_fast_render_settings(model)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        self.cameras = tuple(cameras)
        self.flip = frozenset(flip)
        self._renderer = mujoco.Renderer(model, size, size)
        _release_egl_context()

    def render(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        images = {}
        for cam in self.cameras:
            self._renderer.update_scene(data, camera=cam)
            img = self._renderer.render()
            images[cam] = np.ascontiguousarray(img[::-1]) if cam in self.flip else img
        _release_egl_context()
        return images

    def close(self) -> None:
        close_renderer(self._renderer)


def _release_egl_context() -> None:
    """Leave no EGL context current between renders.

    Other code in the process (gymnasium's MuJoCo viewers, for one) frees its MuJoCo GL
    objects whenever Python collects them, under whatever context is current. If that is
    ours, ids coincide and our framebuffers are deleted: every later image is blank. With
    no context current such frees touch nothing; ``Renderer.render`` makes ours current
    again before drawing.
    """
    if os.environ.get("MUJOCO_GL", "").lower() != "egl":
        return
    from mujoco import egl

    if egl.EGL_DISPLAY is not None:
        egl.EGL.eglMakeCurrent(egl.EGL_DISPLAY, egl.EGL.EGL_NO_SURFACE, egl.EGL.EGL_NO_SURFACE, egl.EGL.EGL_NO_CONTEXT)


def close_renderer(renderer: mujoco.Renderer | None) -> None:
    """Close a ``mujoco.Renderer`` with its own GL context current.

    ``Renderer.close`` frees the GL context first and MuJoCo's GL objects after, under
    whichever context is then current; under another renderer's context that deletes the
    other renderer's framebuffers (ids are per context, so they coincide), and its images
    turn blank. Freeing the objects first, in their own context, avoids that.
    """
    if renderer is None:
        return
    gl, mjr = getattr(renderer, "_gl_context", None), getattr(renderer, "_mjr_context", None)
    if gl is not None and mjr is not None:
        gl.make_current()
        mjr.free()
        renderer._mjr_context = None
    renderer.close()
