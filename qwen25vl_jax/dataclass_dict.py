"""Frozen config dataclasses <-> plain dicts (config files, JSON), strictly.

The experiment configs are built from the library's dataclasses (`as_plain`), so every default
lives in the dataclass; reading a config back (`from_plain`, `replace_from_plain`) refuses a key
the dataclass does not have and names it, so a misspelt `--config.optim.weight_decy` is an error
rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

import numpy as np


def as_plain(obj: Any) -> Any:
    """A dataclass as a nested dict of plain values: dtypes by name, enums by value, nested
    dataclasses as dicts, tuples kept."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, np.dtype):
        return obj.name
    if isinstance(obj, tuple):
        return tuple(as_plain(x) for x in obj)
    return obj


def _check_keys(cls: type, d: Mapping, where: str) -> dict[str, dataclasses.Field]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(d) - set(fields)):
        names = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise ValueError(f"unknown config key {names}; {cls.__name__} has {', '.join(fields)}")
    return fields


def _value(current: Any, value: Any, where: str) -> Any:
    """`value` in the form of the field's current value: nested dataclasses are replaced field
    by field, lists become tuples where the field holds a tuple."""
    if dataclasses.is_dataclass(current) and not isinstance(current, type):
        if not isinstance(value, Mapping):
            raise ValueError(
                f"config key {where}: expected a mapping of "
                f"{type(current).__name__} fields, got {value!r}"
            )
        return replace_from_plain(current, value, where=where)
    if isinstance(current, tuple) and isinstance(value, list | tuple):
        return tuple(value)
    return value


def replace_from_plain(obj: Any, overrides: Mapping, *, where: str = "") -> Any:
    """`obj` with the fields named in `overrides` (nested dicts for nested dataclasses)
    replaced. Raises ValueError naming an unknown key (`where` is its config prefix) or a
    value the dataclass refuses."""
    overrides = dict(overrides)
    _check_keys(type(obj), overrides, where)
    changes = {
        k: _value(getattr(obj, k), v, f"{where}.{k}" if where else k) for k, v in overrides.items()
    }
    try:
        return dataclasses.replace(obj, **changes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config {where or type(obj).__name__}: {e}") from None


def from_plain(cls: type, d: Mapping, *, where: str = "") -> Any:
    """`cls(**d)` for a dataclass whose fields all have defaults, strictly (see
    `replace_from_plain`)."""
    return replace_from_plain(cls(), d, where=where)
