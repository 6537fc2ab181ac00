"""Allowed values declared on config fields, and the check that enforces them.

Imports nothing heavy (no torch), so env and data configs declare their ranges too; the
public face is ``vlarl.runtime.config``, whose docstring shows the use.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from vlarl.errors import ConfigError

T = TypeVar("T")

RANGE_KEY = "vlarl.range"  # where ``ranged`` keeps a field's Range in its dataclass metadata


@dataclasses.dataclass(frozen=True)
class Range:
    """The values one config field admits: numeric bounds or a list of choices. A list
    or tuple value is checked entry by entry; ``None`` always passes (the type decides
    whether it may be ``None``)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # a string or mapping in a union type: its own type check applies
        if math.isnan(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def refusal(self, key: str, value: Any) -> str:
        """The message for ``value`` outside the range: ``steps must be >= 1, got -5``; with
        choices, ``human must be one of its choices, got 'x' (valid: sim, none)``."""
        if self.choices is not None:
            return f"{key} must be one of its choices, got {value!r} (valid: {', '.join(map(str, self.choices))})"
        return f"{key} must be {self.describe()}, got {value!r}"

    def describe(self) -> str:
        """``>= 1``, ``in (0, 1]``, ``one of 'a', 'b'``: what the field admits, in words."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else ""
        high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        if high:
            return f"{'<=' if self.le is not None else '<'} {high[:-1]}"
        return "a number (not NaN)"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def ranged(default: Any = dataclasses.MISSING, *, default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field with its allowed values declared: ``steps: int = ranged(100, ge=1)``,
    ``mode: str = ranged("a", choices=MODES)``. With no bound and no choices the field admits
    any number but NaN. Use ``default_factory`` for lists (each entry is checked)."""
    if choices is not None and any(b is not None for b in (ge, gt, le, lt)):
        raise TypeError("ranged: give bounds or choices, not both")
    spec = Range(ge, gt, le, lt, tuple(choices) if choices is not None else None)
    meta = {RANGE_KEY: spec}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def range_of(cls: Any, name: str) -> Range | None:
    """The Range field ``name`` of dataclass ``cls`` declares, or None."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get(RANGE_KEY)
    raise KeyError(name)


class Problem(typing.NamedTuple):
    """One field outside its range: the dotted key and the message that names it."""

    key: str
    message: str


def range_problems(cfg: Any, prefix: str = "") -> list[Problem]:
    """Every declared field of ``cfg``, nested configs included, whose value (or one of whose
    entries, for a list) is outside its range."""
    problems: list[Problem] = []
    for f in dataclasses.fields(cfg):
        value, key, spec = getattr(cfg, f.name), prefix + f.name, f.metadata.get(RANGE_KEY)
        if spec is not None and isinstance(value, (list, tuple)):
            problems += [Problem(key, spec.refusal(f"{key} entries", v)) for v in value if not spec.admits(v)]
        elif spec is not None and value is not None and not spec.admits(value):
            problems.append(Problem(key, spec.refusal(key, value)))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            problems += range_problems(value, key + ".")
    return problems


def check_ranges(cfg: T, where: str = "config", prefix: str = "") -> T:
    """Raise one ConfigError naming every field of ``cfg`` (nested configs too) outside its
    declared range, else return ``cfg``. ``prefix`` goes before each key (``"twin."``).
    ``None`` (a run being resumed: its config was checked when it was loaded) passes."""
    if cfg is not None:
        problems = range_problems(cfg, prefix)
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(p.message for p in problems))
    return cfg
