"""Plots written next to results (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training(run_path: Path) -> Path | None:
    """Loss and success against training step, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    succ = [(r["step"], r["mean_success"]) for r in rows if "mean_success" in r]
    if not loss:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(*zip(*loss), label="training loss", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if succ:
        ax2 = ax.twinx()
        ax2.plot(*zip(*succ), "o-", color="tab:green", label="success")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("mean success")
    ax.set_title("SFT")
    fig.tight_layout()
    path = run_path / "training.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def hil_serl_curves(results: dict, path: Path, window: int = 20, averaged_over: int | None = None) -> Path:
    """Evaluation success and the intervention rate (moving mean over ``window`` episodes;
    ``averaged_over`` names the episodes per point when the rows are already averages)
    against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.5))
    evals = results.get("evals", [])
    if evals:
        ax.plot([e["step"] for e in evals], [e["success"] for e in evals], "o-", color="tab:green",
                label="success (policy alone)")
    eps = results.get("episodes", [])
    if eps:
        rate = np.convolve([e["intervention_rate"] for e in eps], np.ones(window) / window, mode="valid") \
            if len(eps) >= window else [np.mean([e["intervention_rate"] for e in eps])]
        steps = [e["step"] for e in eps][len(eps) - len(rate):]
        ax.plot(steps, rate, color="tab:red", label=f"intervention rate ({averaged_over or window}-episode mean)")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("env steps")
    ax.legend(loc="center right", fontsize=8)
    ax.set_title("HIL-SERL")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
