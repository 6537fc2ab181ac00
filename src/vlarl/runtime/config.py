"""Typed configs: dataclasses filled from YAML recipes and dotted command-line overrides.

    cfg = load_config(CollectConfig, "configs/demo.yaml", ["env.name=metaworld/reach", "episodes=5"])

Every key is checked against the dataclass: an unknown key is an error naming the file (or
the override) and listing the valid keys, closest first; values are converted to the
field's type or rejected.

Ranges and choices live on the declaration, with ``ranged`` in place of a plain default::

    from vlarl.runtime.config import check_ranges, ranged

    @dataclass
    class TrainConfig:
        steps: int = ranged(30_000, ge=1)                   # bounds: ge, gt, le, lt
        gamma: float = ranged(0.99, gt=0, le=1)             # (0, 1]
        runtime: str = ranged("multiprocess", choices=("inprocess", "multiprocess", "ray"))
        cameras: list[str] = ranged(default_factory=list, choices=("front", "wrist"))  # each entry
        target_kl: float | None = ranged(0.05, gt=0)        # None passes when the type allows it
        init_log_std: float = ranged(-1.6)                  # any number, deliberately (never NaN)

``check_ranges(cfg)`` checks every declared field of ``cfg`` and of the configs nested in it
and raises one ``ConfigError`` naming each bad key (dotted: ``sac.batch_size``), its value
and what is allowed. ``load_config`` (and so ``Run.resume``) runs it on every config it
builds; recipes run it on the config they are given before they create a run directory,
so a config built in Python is checked too. ``range_of(cls, name)`` reads a declaration
back (``None`` when the field declares none). Checks across fields (``subset <= ensemble``)
stay in the code that needs them. The helpers live in ``vlarl.ranges`` (no torch import, so
env and data modules use them from there) and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vlarl.errors import ConfigError, unknown
from vlarl.fileio import atomic_write_bytes
from vlarl.ranges import Range, check_ranges, range_of, range_problems, ranged

__all__ = ["Range", "check_ranges", "load_config", "range_of", "range_problems", "ranged", "save_config", "to_dict",
           "valid_keys"]

T = TypeVar("T")


def _field_types(cls: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(cls: Any, prefix: str = "") -> list[str]:
    """All dotted keys of a config dataclass, nested ones included."""
    keys = []
    for name, tp in _field_types(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, prefix + name + "."))
    return keys


def _inside_mapping_field(cls: type, dotted: str) -> bool:
    """True for ``env.options.reward``: a key inside a free-form mapping field (``options: dict``)."""
    tp: Any = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp) or part not in _field_types(tp):
            return False
        tp = _field_types(tp)[part]
        if (typing.get_origin(tp) is dict or tp is dict) and i < len(parts) - 1:
            return True
    return False


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: cannot convert {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg, *_rest) = typing.get_args(tp) or (Any,)
        items = [_convert(v, arg, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {getattr(tp, '__name__', tp)} keys, got {value!r}")
        return _build_nested(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "2e4" as a string; numbers written that way are common in recipes
            value = float(value)
        except ValueError:
            pass
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _merge(base: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = base
    for p in parents:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[leaf] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Defaults of ``cls``, then the YAML file at ``path``, then ``key.sub=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        values = loaded
        upgrade = getattr(cls, "upgrade", None)  # a recipe's renamed keys, in files an older vlarl wrote
        if upgrade is not None:
            values = upgrade(values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        if key not in valid_keys(cls) and not _inside_mapping_field(cls, key):
            raise ConfigError(unknown("key", key, valid_keys(cls), f"override {item!r}"))
        _merge(values, key, yaml.safe_load(raw) if raw else "")
    where = str(path) if path else "config"
    cfg = _build_nested(cls, values, where)
    problems = range_problems(cfg)
    if problems:  # one message; a value given on the command line names its override
        given = {item.split("=", 1)[0]: item for item in overrides}
        raise ConfigError("; ".join((f"override {given[p.key]!r}: " if p.key in given else f"{where}: ") + p.message
                                    for p in problems))
    return cfg


def _build_nested(cls: Any, values: dict[str, Any], where: str, prefix: str = "", base: Any = None) -> Any:
    """An instance of ``cls`` from (possibly partial) values. Omitted keys keep ``base``'s
    values, else the defaults the enclosing config gives (its ``default_factory``), else
    the class defaults: overriding ``env.name`` must not reset the recipe's other env keys."""
    types_ = _field_types(cls)
    kwargs: dict[str, Any] = {}
    if base is not None:
        kwargs = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(unknown("key", prefix + key, valid_keys(cls, prefix), where))
        tp = types_[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            start = kwargs.get(key, _field_default(cls, key))
            kwargs[key] = _build_nested(tp, value, where, prefix + key + ".", base=start)
        else:
            kwargs[key] = _convert(value, tp, f"{where}: {prefix}{key}")
    return cls(**kwargs)


def _field_default(cls: Any, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (for YAML and JSON)."""
    out = dataclasses.asdict(cfg)
    return typing.cast(dict, _plain(out))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def save_config(cfg: Any, path: str | Path) -> None:
    atomic_write_bytes(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
