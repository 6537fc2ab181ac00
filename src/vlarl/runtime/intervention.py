"""Real intervention devices: keyboard (pynput) and gamepad (pygame).

Both follow the device contract of ``vlarl.envs.intervention``: ``device(obs, action)``
returns the human's action while the human has taken over, else None. Both are checked
when built: with no display, no input permission or no gamepad they raise one clear error
before a run starts, and a device that fails later (unplugged pad) hands control back to
the policy instead of crashing the run.

Keyboard: space toggles take-over; arrows move in x/y, w/s in z; c closes, o opens the
gripper (held keys act every step). Gamepad: hold the right bumper to take over; left stick
x/y, right stick z; A closes, B opens.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from vlarl.errors import VlarlError

_KEY_AXES = {"up": (0, 1.0), "down": (0, -1.0), "left": (1, 1.0), "right": (1, -1.0), "w": (2, 1.0), "s": (2, -1.0)}


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class KeyboardDevice:
    def __init__(self, action_dim: int = 4, speed: float = 1.0) -> None:
        if not _has_display():
            raise VlarlError("human=keyboard is unavailable: no display (DISPLAY and WAYLAND_DISPLAY are unset); "
                             "use human=sim, human=gamepad or human=none")
        try:
            from pynput import keyboard
        except Exception as err:  # pynput raises several types when it finds no usable backend
            raise VlarlError(f"human=keyboard is unavailable: pynput cannot start ({err})") from err
        self.action_dim, self.speed = action_dim, speed
        self._held: set[str] = set()
        self._active = False
        self._gripper = -1.0
        self._lock = threading.Lock()
        self._listener = keyboard.Listener(on_press=self._press, on_release=self._release)
        self._listener.start()

    @staticmethod
    def _name(key: Any) -> str:
        return getattr(key, "char", None) or getattr(key, "name", "") or ""

    def _press(self, key: Any) -> None:
        name = self._name(key)
        with self._lock:
            if name == "space":
                self._active = not self._active
            elif name in ("c", "o"):
                self._gripper = 1.0 if name == "c" else -1.0
            self._held.add(name)

    def _release(self, key: Any) -> None:
        with self._lock:
            self._held.discard(self._name(key))

    def reset(self) -> None:
        with self._lock:
            self._active = False

    def __call__(self, obs: dict[str, Any], policy_action: np.ndarray) -> np.ndarray | None:
        with self._lock:
            if not self._active:
                return None
            a = np.zeros(self.action_dim, np.float32)
            for name in self._held:
                if name in _KEY_AXES:
                    axis, sign = _KEY_AXES[name]
                    a[axis] += sign * self.speed
            a[-1] = self._gripper
        return np.clip(a, -1.0, 1.0)

    def close(self) -> None:
        self._listener.stop()


class GamepadDevice:
    def __init__(self, action_dim: int = 4, index: int = 0, deadzone: float = 0.1) -> None:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # joystick input needs no window
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame
        except ImportError as err:
            raise VlarlError("human=gamepad is unavailable: pygame is not installed (pip install pygame)") from err
        pygame.init()
        pygame.joystick.init()
        count = pygame.joystick.get_count()
        if count <= index:
            raise VlarlError(f"human=gamepad is unavailable: {count} gamepad(s) found, need index {index}; "
                             "plug one in, or use human=sim, human=keyboard or human=none")
        self.pygame, self.pad = pygame, pygame.joystick.Joystick(index)
        self.action_dim, self.deadzone = action_dim, deadzone
        self._gripper = -1.0
        self._failed = False

    def reset(self) -> None:
        pass

    def __call__(self, obs: dict[str, Any], policy_action: np.ndarray) -> np.ndarray | None:
        if self._failed:
            return None
        try:
            self.pygame.event.pump()
            if not self.pad.get_button(5):  # right bumper held: the human drives
                return None
            if self.pad.get_button(0):
                self._gripper = 1.0
            elif self.pad.get_button(1):
                self._gripper = -1.0
            axes = [self.pad.get_axis(i) for i in (1, 0, 4)]
        except self.pygame.error:
            self._failed = True  # unplugged mid-run: the policy keeps control
            return None
        a = np.zeros(self.action_dim, np.float32)
        a[:3] = [-v if abs(v) > self.deadzone else 0.0 for v in axes]
        a[-1] = self._gripper
        return np.clip(a, -1.0, 1.0)
