"""One evaluation protocol for every learning benchmark: how a run is scored, how seeds are
aggregated, and what is written beside a figure.

- A run's score is the mean of its last ``last_k`` evaluations (one lucky evaluation at the
  end does not make a run).
- Across seeds (and tasks): the mean and the interquartile mean (IQM: the mean of the middle
  half of the run scores, rliable's ``trim_mean(x, 0.25)``), each with a 95% percentile
  bootstrap interval. With several tasks the bootstrap is stratified, as rliable's: each
  replicate resamples the seeds of every task with replacement.
- Curves: the mean across seeds at each evaluation step, with a bootstrap band.
- Every figure carries the number of seeds, evaluation episodes and ``last_k`` it stands on.

The bootstrap is seeded: the same scores give the same intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlarl.errors import VlarlError

LAST_K = 3
BOOTSTRAP_REPS = 2_000


def run_score(evals: Sequence[float] | Sequence[Mapping[str, Any]], last_k: int = LAST_K,
              key: str = "success") -> float:
    """Mean of a run's last ``last_k`` evaluations (numbers, or rows holding ``key``)."""
    if last_k < 1:
        raise VlarlError(f"last_k must be at least 1, got {last_k}")
    values = [float(e[key]) if isinstance(e, Mapping) else float(e) for e in evals]
    if not values:
        raise VlarlError("a run with no evaluations has no score")
    return float(np.mean(values[-last_k:]))


def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: drop the lowest and the highest quarter (rounded down) and average the rest."""
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if x.size == 0:
        raise VlarlError("the IQM of no scores is undefined")
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


@dataclass
class Aggregate:
    """Run scores across seeds (and tasks), with 95% bootstrap intervals."""

    mean: float
    mean_ci95: tuple[float, float]
    iqm: float
    iqm_ci95: tuple[float, float]
    runs: int  # run scores aggregated (seeds x tasks)
    seeds: int  # seeds per task (the fewest, when tasks differ)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean_ci95"], d["iqm_ci95"] = list(self.mean_ci95), list(self.iqm_ci95)
        return d

    def describe(self, episodes: int | None = None, last_k: int | None = LAST_K) -> str:
        """``0.85 (95% CI 0.70-0.95; IQM 0.87, 0.75-0.95; 5 seeds x 50 episodes, last 3 evaluations)``."""
        basis = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        if episodes is not None:
            basis += f" x {episodes} episodes"
        if last_k is not None:
            basis += f", last {last_k} evaluations" if last_k > 1 else ", last evaluation"
        return (f"{self.mean:.2f} (95% CI {self.mean_ci95[0]:.2f}-{self.mean_ci95[1]:.2f}; "
                f"IQM {self.iqm:.2f}, {self.iqm_ci95[0]:.2f}-{self.iqm_ci95[1]:.2f}; {basis})")


def aggregate(scores: Sequence[float] | Mapping[str, Sequence[float]], reps: int = BOOTSTRAP_REPS,
              seed: int = 0) -> Aggregate:
    """Mean and IQM of run scores, one list per task (or one list), with stratified percentile
    bootstrap intervals over seeds."""
    tasks = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()} if isinstance(scores, Mapping) \
        else {"": np.asarray(scores, dtype=np.float64)}
    if not tasks or any(v.ndim != 1 or v.size == 0 for v in tasks.values()):
        raise VlarlError(f"aggregate needs at least one run score per task, got {dict(scores) if isinstance(scores, Mapping) else list(scores)}")
    if reps < 1:
        raise VlarlError(f"reps must be at least 1, got {reps}")
    rng = np.random.default_rng(seed)
    flat = np.concatenate(list(tasks.values()))
    # each replicate: every task's seeds resampled with replacement, the tasks kept as they are
    resampled = np.concatenate([v[rng.integers(0, v.size, (reps, v.size))] for v in tasks.values()], axis=1)
    means = resampled.mean(axis=1)
    cut = int(0.25 * flat.size)  # iqm() of every replicate at once
    iqms = np.sort(resampled, axis=1)[:, cut:flat.size - cut].mean(axis=1)

    def ci(x: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(x, [2.5, 97.5])
        return float(lo), float(hi)

    return Aggregate(mean=float(flat.mean()), mean_ci95=ci(means), iqm=iqm(flat), iqm_ci95=ci(iqms),
                     runs=int(flat.size), seeds=min(v.size for v in tasks.values()))


def curve(runs: Sequence[Sequence[Mapping[str, Any]]], key: str = "success", reps: int = BOOTSTRAP_REPS,
          seed: int = 0, by_index: bool = False) -> list[dict[str, float]]:
    """Mean across runs at each evaluation step every run has, with a 95% bootstrap band:
    rows ``{step, mean, lo, hi, runs}``. ``by_index`` pairs the i-th evaluation of every run
    instead, at the mean of their steps: for runs that evaluate at the first episode end after
    each ``eval_every`` (HIL-SERL's), whose steps differ by a few from run to run."""
    if not runs:
        raise VlarlError("a curve needs at least one run")
    if by_index:
        count = min(len(run) for run in runs)
        by_step = [{i: float(e[key]) for i, e in enumerate(run[:count])} for run in runs]
        at = {i: float(np.mean([run[i]["step"] for run in runs])) for i in range(count)}
    else:
        by_step = [{int(e["step"]): float(e[key]) for e in run} for run in runs]
    steps = sorted(set.intersection(*(set(s) for s in by_step)))
    rng = np.random.default_rng(seed)
    rows = []
    for step in steps:
        values = np.array([s[step] for s in by_step])
        boot = values[rng.integers(0, values.size, (reps, values.size))].mean(axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        rows.append({"step": at[step] if by_index else step, "mean": float(values.mean()), "lo": float(lo), "hi": float(hi),
                     "runs": int(values.size)})
    return rows


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, title: str,
                episodes: int | None = None, ylabel: str = "success") -> Path:
    """Each method's mean curve with its band, the seeds and episodes behind it in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, rows in curves.items():
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        label = f"{name} ({rows[0]['runs']:.0f} seeds" + (f" x {episodes} episodes)" if episodes else ")")
        line, = ax.plot(steps, [r["mean"] for r in rows], "o-", markersize=3, label=label)
        ax.fill_between(steps, [r["lo"] for r in rows], [r["hi"] for r in rows], color=line.get_color(), alpha=0.2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title + " (mean, 95% bootstrap band)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
