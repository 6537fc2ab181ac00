"""An online replay and a demo (offline) replay behind one sampler that owns the mix.

Every off-policy recipe trains on two sources of transitions: what the policy collects
(``online``) and what a human or an expert did (``offline``: RLPD's fixed dataset,
HIL-SERL's and ConRFT's demo buffer, which also receives every intervened segment). Each
minibatch takes exactly ``round(batch_size * ratio)`` rows from the offline buffer (RLPD's
symmetric sampling) once that buffer can supply them, the rest online; before then, and
without an offline buffer, every row is online.

``ready()`` says whether a minibatch can be drawn: the online buffer holds its share
(the whole batch while the offline buffer cannot supply its own). The recipe never checks
sizes itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlarl.data.replay import ReplayBuffer, sample_mixed
from vlarl.errors import VlarlError


def intervened_segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, end) of True steps."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def slice_episode(arrays: Mapping[str, np.ndarray], start: int, end: int) -> dict[str, np.ndarray]:
    """Steps [start, end) with their observations start..end (T + 1 rows), as an episode."""
    t = len(arrays["action"])
    return {k: (v[start:end + 1] if len(v) == t + 1 else v[start:end]) for k, v in arrays.items()}


class MixedReplay:
    """``online`` and an optional ``offline`` buffer; ``ratio`` of each minibatch from ``offline``.

    ``offline_grows``: interventions are copied into ``offline`` and it is checkpointed with
    the online buffer (HIL-SERL, ConRFT); otherwise it is a fixed dataset, rebuilt from its
    source on resume and never saved (RLPD)."""

    def __init__(self, online: ReplayBuffer, offline: ReplayBuffer | None, batch_size: int, ratio: float,
                 offline_grows: bool = False) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise VlarlError(f"offline ratio must be in [0, 1], got {ratio}")
        if offline_grows and offline is None:
            raise VlarlError("a growing offline buffer (interventions) needs an offline buffer")
        self.online, self.offline = online, offline
        self.batch_size, self.ratio, self.offline_grows = batch_size, ratio, offline_grows

    @property
    def offline_rows(self) -> int:
        """Offline rows in the next minibatch: their share once the offline buffer can supply it."""
        n = round(self.batch_size * self.ratio) if self.offline is not None else 0
        return n if n and self.offline is not None and len(self.offline) >= n else 0

    def ready(self) -> bool:
        """Whether ``sample`` can draw a minibatch."""
        return len(self.online) >= self.batch_size - self.offline_rows

    def sample(self, n_batches: int) -> dict[str, Any]:
        """``n_batches`` minibatches at once, each with its offline rows marked (``offline``)."""
        n_off = self.offline_rows
        return sample_mixed(self.online, self.offline if n_off else None, self.batch_size, n_batches,
                            n_off / self.batch_size if n_off else 0.0)

    def add_episode(self, arrays: Mapping[str, np.ndarray], intervened: np.ndarray | None = None) -> None:
        """A whole episode into ``online``, and its intervened segments into ``offline``."""
        self.online.add_episode(arrays)
        self.add_interventions(arrays, intervened)

    def add_interventions(self, arrays: Mapping[str, np.ndarray], intervened: np.ndarray | None) -> None:
        """An episode's intervened segments into ``offline`` (the online part is already stored)."""
        if intervened is None or not self.offline_grows:
            return
        assert self.offline is not None
        for start, end in intervened_segments(intervened):
            self.offline.add_episode(slice_episode(arrays, start, end))

    def add_demo(self, arrays: Mapping[str, np.ndarray]) -> None:
        """A demonstration, whole, into ``offline``."""
        if self.offline is None:
            raise VlarlError("no offline buffer to add demos to")
        self.offline.add_episode(arrays)

    @property
    def bytes_per_transition(self) -> int:
        return self.online.bytes_per_frame

    def state_dict(self) -> dict[str, Any]:
        d = {"online": self.online.state_dict()}
        if self.offline_grows:
            assert self.offline is not None
            d["demos"] = self.offline.state_dict()
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """A checkpoint of ``state_dict``; a bare buffer's (an RLPD run of an older vlarl) is the online one."""
        if "online" not in d:
            self.online.load_state_dict(d)
            return
        self.online.load_state_dict(d["online"])
        if self.offline_grows:
            if "demos" not in d:
                raise VlarlError("replay checkpoint has no demo buffer, but this run grows one")
            assert self.offline is not None
            self.offline.load_state_dict(d["demos"])
