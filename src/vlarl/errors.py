"""One exception family for bad input, with "did you mean" suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VlarlError(Exception):
    """Bad input from the user: an unknown name, a corrupt file, a wrong shape.

    The command line prints the message alone (no traceback); the message says what is wrong
    and where.
    """


class ConfigError(VlarlError, KeyError):
    """An unknown or ill-typed configuration key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(VlarlError):
    """A dataset file that is missing, truncated or corrupt."""


class CheckpointError(VlarlError):
    """A checkpoint that is missing or unreadable."""


def closest_first(name: str, valid: Iterable[str]) -> list[str]:
    """All valid names, the ones most similar to ``name`` first."""
    valid = sorted(set(valid))
    ratio = {v: difflib.SequenceMatcher(None, name, v).ratio() for v in valid}
    return sorted(valid, key=lambda v: (-ratio[v], v))


def unknown(kind: str, name: str, valid: Iterable[str], where: str = "", limit: int = 12) -> str:
    """Message for an unknown name that lists the valid ones, closest first."""
    ranked = closest_first(name, valid)
    shown = ", ".join(ranked[:limit]) + (f", ... ({len(ranked)} in all)" if len(ranked) > limit else "")
    prefix = f"{where}: " if where else ""
    return f"{prefix}unknown {kind} {name!r}; valid: {shown}"
