"""Parameter groups: every model labels each parameter ``backbone``, ``adapter`` or ``head``.

A model implements ``param_group(name) -> str``; freezing and optimiser groups go through
the helpers here, so "train only the head" means the same thing for every model.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

GROUPS = ("backbone", "adapter", "head")


def named_group_params(model: nn.Module, group: str) -> Iterator[tuple[str, nn.Parameter]]:
    if group not in GROUPS:
        from vlarl.errors import VlarlError, unknown

        raise VlarlError(unknown("parameter group", group, GROUPS))
    for name, p in model.named_parameters():
        if model.param_group(name) == group:  # type: ignore[operator]
            yield name, p


def group_params(model: nn.Module, group: str) -> list[nn.Parameter]:
    return [p for _, p in named_group_params(model, group)]


def set_trainable(model: nn.Module, *groups: str) -> None:
    """Make exactly ``groups`` trainable; every other parameter is frozen."""
    for g in GROUPS:
        for p in group_params(model, g):
            p.requires_grad_(g in groups)


def freeze(model: nn.Module, *groups: str) -> None:
    for g in groups:
        for p in group_params(model, g):
            p.requires_grad_(False)


def unfreeze(model: nn.Module, *groups: str) -> None:
    for g in groups:
        for p in group_params(model, g):
            p.requires_grad_(True)


def group_sizes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Parameter counts per group: total and trainable."""
    out = {}
    for g in GROUPS:
        ps = group_params(model, g)
        out[g] = {"total": sum(p.numel() for p in ps), "trainable": sum(p.numel() for p in ps if p.requires_grad)}
    return out

