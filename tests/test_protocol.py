"""The shared evaluation protocol: run scores, IQM, bootstrap intervals, curves."""

from __future__ import annotations

import numpy as np
import pytest

from vlarl.errors import VlarlError
from vlarl.eval.protocol import aggregate, curve, iqm, plot_curves, run_score


def test_a_run_scores_the_mean_of_its_last_k_evaluations():
    evals = [{"step": s, "success": v} for s, v in ((2000, 0.0), (4000, 0.9), (6000, 0.2), (8000, 0.7), (10000, 0.9))]
    assert run_score(evals, last_k=3) == pytest.approx((0.2 + 0.7 + 0.9) / 3)
    assert run_score(evals, last_k=1) == pytest.approx(0.9)
    assert run_score([0.5, 1.0], last_k=3) == pytest.approx(0.75)  # fewer evaluations than k: all of them
    with pytest.raises(VlarlError, match="last_k"):
        run_score(evals, last_k=0)
    with pytest.raises(VlarlError, match="no evaluations"):
        run_score([])


def test_iqm_drops_the_outer_quarters():
    assert iqm([0.0, 0.5, 0.6, 0.7, 1.0]) == pytest.approx(0.6)  # 5 runs: one cut from each end
    assert iqm([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]) == pytest.approx(np.mean([0.4, 0.6, 0.8, 1.0]))
    assert iqm([0.3, 0.9]) == pytest.approx(0.6)  # too few to trim: the mean


def test_aggregate_intervals_bracket_the_estimates_and_repeat_for_a_seed():
    scores = [0.1, 0.5, 0.8, 0.9, 1.0]
    a = aggregate(scores, seed=3)
    assert a.mean == pytest.approx(np.mean(scores)) and a.iqm == pytest.approx(np.mean([0.5, 0.8, 0.9]))
    assert a.mean_ci95[0] < a.mean < a.mean_ci95[1] and a.iqm_ci95[0] <= a.iqm <= a.iqm_ci95[1]
    assert 0.1 <= a.mean_ci95[0] and a.mean_ci95[1] <= 1.0
    assert aggregate(scores, seed=3) == a
    assert (a.runs, a.seeds) == (5, 5)
    same = aggregate([0.7] * 4)
    assert same.mean_ci95 == pytest.approx((0.7, 0.7)) and same.iqm_ci95 == pytest.approx((0.7, 0.7))
    assert "5 seeds x 50 episodes, last 3 evaluations" in a.describe(episodes=50)


def test_tasks_are_resampled_within_themselves():
    # stratified: a replicate never draws one task's seeds for another, so with every run of a
    # task equal the interval has no width whatever the tasks' difference
    a = aggregate({"easy": [1.0, 1.0, 1.0], "hard": [0.0, 0.0, 0.0]})
    assert a.mean == pytest.approx(0.5) and a.mean_ci95 == pytest.approx((0.5, 0.5))
    assert (a.runs, a.seeds) == (6, 3)
    pooled = aggregate([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert pooled.mean_ci95[1] - pooled.mean_ci95[0] > 0.3
    with pytest.raises(VlarlError, match="at least one run score"):
        aggregate({"easy": [1.0], "hard": []})


def test_curves_average_the_steps_every_run_has(tmp_path):
    runs = [[{"step": 1000, "success": 0.0}, {"step": 2000, "success": 0.5}, {"step": 3000, "success": 1.0}],
            [{"step": 1000, "success": 0.2}, {"step": 2000, "success": 0.7}]]
    rows = curve(runs)
    assert [r["step"] for r in rows] == [1000, 2000]
    assert rows[1]["mean"] == pytest.approx(0.6) and rows[1]["lo"] <= 0.6 <= rows[1]["hi"]
    assert rows[0]["runs"] == 2
    path = plot_curves({"rlpd": rows}, tmp_path / "c.png", "drawer-open", episodes=10)
    assert path.stat().st_size > 0


def test_curves_by_index_pair_the_ith_evaluations_of_runs_whose_steps_differ():
    # evaluations at the first episode end after each eval_every: a few steps apart per run
    runs = [[{"step": 0, "success": 0.0}, {"step": 1762, "success": 0.2}, {"step": 3500, "success": 1.0}],
            [{"step": 0, "success": 0.0}, {"step": 1810, "success": 0.4}]]
    assert [r["step"] for r in curve(runs)] == [0]  # by step only the start is shared
    rows = curve(runs, by_index=True)
    assert [r["step"] for r in rows] == [0, pytest.approx(1786)]
    assert rows[1]["mean"] == pytest.approx(0.3) and rows[1]["runs"] == 2
