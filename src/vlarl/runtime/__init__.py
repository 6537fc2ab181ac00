"""Run infrastructure shared by every trainer: configs, run directories, checkpoints, seeding."""

from vlarl.runtime.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from vlarl.runtime.config import load_config, save_config, to_dict, valid_keys
from vlarl.runtime.run import Run, finish_stage, resolve_device
from vlarl.runtime.seeding import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "Run",
    "finish_stage",
    "get_rng_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "resolve_device",
    "save_checkpoint",
    "save_config",
    "seed_everything",
    "set_rng_state",
    "to_dict",
    "valid_keys",
]
