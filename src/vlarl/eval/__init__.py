"""Rollouts, success statistics, the evaluation protocol, videos and plots."""

from vlarl.eval.protocol import Aggregate, aggregate, curve, iqm, plot_curves, run_score
from vlarl.eval.rollout import EpisodeResult, run_episode
from vlarl.eval.stats import wilson_interval
from vlarl.eval.video import write_video

__all__ = ["Aggregate", "EpisodeResult", "aggregate", "curve", "iqm", "plot_curves", "run_episode", "run_score",
           "wilson_interval", "write_video"]
