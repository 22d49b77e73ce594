"""Typed building of frozen config dataclasses from YAML mappings: unknown keys and mistyped values fail with
one line naming the dotted key (used by ``benchmark.config``)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from spinebench.datamodules.errors import InputError


class ConfigError(InputError):
    """An experiment key, value, method, data source or device setting that cannot be used."""


def _check_keys(raw: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    unknown = [k for k in raw if k not in valid]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; valid keys: {', '.join(valid)}")


def build_typed(cls: type, raw: Mapping[str, Any], where: str):
    """``cls(**raw)`` with every value checked against its field's type hint; errors name ``where.key``.

    A mapping field whose metadata names a ``schema`` dataclass (``field(metadata={"schema": PhantomConfig})``)
    holds overrides of that dataclass: its keys and values are checked the same way, and the mapping is kept.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(raw, list(fields), where)
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(v, hints.get(k, Any), f"{where}.{k}") for k, v in raw.items()}
    for k, v in values.items():
        schema = fields[k].metadata.get("schema")
        if schema is not None and isinstance(v, Mapping):
            build_typed(schema, v, f"{where}.{k}")
    try:
        return cls(**values)
    except (InputError, TypeError, ValueError) as exc:
        text = str(exc)  # a message that already names its key keeps it
        raise ConfigError(text if text.startswith(f"{where}.") else f"{where}: {text}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint (int, float, str, bool, Optional, tuple[...], Literal, Mapping)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: {value!r} does not fit {_hint_name(hint)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return value  # an int stays an int (Lightning reads limit_*_batches=3 as a batch count)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("precision"):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = list(value)
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            return build_typed(hint, value, key)
        if not isinstance(value, hint):
            raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _plain(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python, recursively (for YAML/JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
