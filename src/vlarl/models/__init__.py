"""Models: vision and language encoders, fusion trunk, heads, parameter groups, LoRA."""

from vlarl.models.groups import GROUPS, freeze, group_params, group_sizes, set_trainable, unfreeze
from vlarl.models.policy import PolicyConfig, VLAPolicy

__all__ = ["GROUPS", "PolicyConfig", "VLAPolicy", "freeze", "group_params", "group_sizes", "set_trainable", "unfreeze"]
