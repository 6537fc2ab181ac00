"""Rollouts, success statistics, videos and plots."""

from vlarl.eval.rollout import EpisodeResult, run_episode
from vlarl.eval.stats import wilson_interval
from vlarl.eval.video import write_video

__all__ = ["EpisodeResult", "run_episode", "wilson_interval", "write_video"]
