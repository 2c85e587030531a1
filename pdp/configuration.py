"""Typed, frozen config sections built from plain mappings (TOML tables).

Each component owns a frozen dataclass with defaults and one doc line per field;
:func:`build_section` checks types, rejects unknown keys and names the field of
any fault, e.g. ``[audit].fsync: expected one of 'always', 'batch', 'never'``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pdp.errors import ConfigError

__all__ = ["build_section"]

T = TypeVar("T")


def build_section(cls: type[T], data: Mapping[str, Any] | None, *, where: str) -> T:
    """Build the frozen dataclass ``cls`` from ``data``; raise ConfigError naming the field.

    ``where`` is the section's name as the user wrote it, e.g. ``[audit]``. Nested
    dataclass fields take sub-tables, named ``[audit.sinks]`` in errors. The
    dataclass's own ``__post_init__`` may raise ValueError for cross-field checks;
    it is reported against the section.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table, got {type(data).__name__}", field=where)
    if not dataclasses.is_dataclass(cls):  # pragma: no cover - programming error
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"unknown setting {unknown[0]!r} (known: {known})", field=where)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc), field=where) from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error names the exact field
            return _coerce(options[0], value, where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError("; ".join(errors), field=where)
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"expected one of {choices}, got {value!r}", field=where)
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {type(value).__name__}", field=where)
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a table, got {type(value).__name__}", field=where)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build_section(hint, value, where=where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in hint)
            raise ConfigError(f"expected one of {choices}, got {value!r}", field=where) from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", field=where)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", field=where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, got {value!r}", field=where)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", field=where)
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"expected a file path, got {value!r}", field=where)
        return Path(value)
    raise ConfigError(f"unsupported setting type {hint!r}", field=where)  # pragma: no cover
