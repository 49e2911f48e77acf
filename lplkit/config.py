"""Typed dataclass configs: TOML loading, dotted `key=value` overrides, resolved dumps.

Every config is a (possibly nested) dataclass. `load_config(cls, path, overrides)` builds one from a
TOML file (recipes in `pipelines/`) and `--set a.b=value` strings; unknown keys and ill-typed values
raise `ConfigError` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from lplkit.errors import ConfigError

T = TypeVar("T")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` (from TOML, JSON or a `--set` string) as type `tp`; `ConfigError` naming `key`."""
    return _coerce(value, tp, key)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: cannot interpret {value!r} as {tp}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if isinstance(value, int):
            return value
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if math.isnan(out):
            raise ConfigError(f"{key}: NaN is not a valid value")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a plain dict, validating keys and types.

    A class with a `from_table(data, prefix)` classmethod builds itself (e.g. `lpl`, whose loss
    options are resolved against its preset); it may call `fields_from_dict` for the plain part.
    """
    hook = getattr(cls, "from_table", None)
    if callable(hook):
        return hook(data, prefix)
    return fields_from_dict(cls, data, prefix)


def fields_from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """`from_dict` without the `from_table` hook: every key a field, each value coerced."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(
            f"{prefix or cls.__name__}: expected a table of key = value, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-serializable dict of a dataclass config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ["a.b=1", "c=x"] into a nested dict {"a": {"b": "1"}, "c": "x"} (values stay strings)."""
    nested: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a table")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
) -> T:
    """Defaults <- `base` <- TOML file at `path` <- dotted `overrides` <- `flags`.

    `flags` is a nested dict of already-typed values (CLI flags), merged last.
    """
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        try:
            data = merge(data, tomllib.loads(p.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    data = merge(data, parse_overrides(overrides))
    data = merge(data, flags or {})
    return from_dict(cls, data)
