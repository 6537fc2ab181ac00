"""Plots written next to results (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_episodes(rewards: Sequence[np.ndarray], successes: Sequence[bool], path: str | Path, title: str) -> Path:
    """Cumulative reward per step for each episode, successful ones solid, failed dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    for i, (r, ok) in enumerate(zip(rewards, successes)):
        ax_curve.plot(np.cumsum(r), linestyle="-" if ok else "--", label=f"ep {i}" if i < 10 else None)
    ax_curve.set_xlabel("step")
    ax_curve.set_ylabel("cumulative reward")
    ax_curve.set_title(title)
    n, k = len(successes), int(sum(successes))
    from vlarl.eval.stats import wilson_interval

    lo, hi = wilson_interval(k, n)
    rate = k / n if n else 0.0
    ax_bar.bar([0], [rate], yerr=[[rate - lo], [hi - rate]], capsize=8, color="tab:green")
    ax_bar.set_ylim(0, 1)
    ax_bar.set_xticks([0], ["success"])
    ax_bar.set_title(f"{k}/{n} (95% CI {lo:.2f}-{hi:.2f})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
