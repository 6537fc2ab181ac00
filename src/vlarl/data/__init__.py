"""Episode datasets on disk (and, in later steps, replay buffers in memory)."""

from vlarl.data.episodes import SOURCES, EpisodeDataset, EpisodeMeta, EpisodeRecorder, EpisodeWriter

__all__ = ["SOURCES", "EpisodeDataset", "EpisodeMeta", "EpisodeRecorder", "EpisodeWriter"]
