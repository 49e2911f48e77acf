"""Typed dataclass configs: TOML loading, dotted `key=value` overrides, resolved dumps.

Every config is a (possibly nested) dataclass. `load_config(cls, path, overrides)` builds one from a
TOML file (recipes in `pipelines/`) and `--set a.b=value` strings; unknown keys and ill-typed values
raise `ConfigError` naming the key, so a typo never silently falls back to a default.

Numbers are typed exactly (an int field takes an integer, never a float or a bool) and each
numeric field declares its valid `Range` once, as field metadata (`ranged(default, ge=1)`); every
config built here is checked against those ranges before anything uses it, and the CLI checks its
flags against the same declarations (`lplkit.cli.options`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lplkit.errors import ConfigError

T = TypeVar("T")

#: The largest integer any numeric option takes (torch and numpy index with int64).
INT64_MAX = 2**63 - 1
#: Most images in one batch or one sampling call (bounds what a typo can allocate).
MAX_BATCH = 1 << 20
#: Most steps of one sampler run.
MAX_SAMPLER_STEPS = 100_000


@dataclass(frozen=True)
class Range:
    """The values a numeric option may take: finite, and within the given bounds (None = open).

    An int option is also at most `INT64_MAX`. Declared once per field (`ranged`) and checked by
    `check_value` wherever the value comes from (TOML, `--set`, a flag, a saved config.json).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        """Whether `value` is finite and within the bounds."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self, integer: bool) -> str:
        """`an integer in [1, 2**63-1]`, `a finite number > 0`, ..."""
        lo = self.ge if self.ge is not None else self.gt
        hi = self.le if self.le is not None else self.lt
        if integer and hi is None:
            hi = INT64_MAX
        what = "an integer" if integer else "a finite number"
        if lo is not None and hi is not None:
            left = "[" if self.ge is not None or self.gt is None else "("
            right = ")" if self.lt is not None else "]"
            return f"{what} in {left}{_num(lo)}, {_num(hi)}{right}"
        if lo is not None:
            return f"{what} {'>=' if self.ge is not None else '>'} {_num(lo)}"
        if hi is not None:
            return f"{what} {'<=' if self.le is not None else '<'} {_num(hi)}"
        return what


def _num(x: float) -> str:
    return "2**63-1" if x == INT64_MAX else (str(int(x)) if float(x).is_integer() else str(x))


_RANGE = "range"


def ranged(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with its valid `Range` (the field's single declaration of its bounds)."""
    return dataclasses.field(default=default, metadata={_RANGE: Range(ge=ge, gt=gt, le=le, lt=lt)})


def field_range(cls: type, key: str) -> Range | None:
    """The declared `Range` of dotted field `key` of dataclass `cls` (None: not numeric/declared)."""
    tp: Any = cls
    found: Range | None = None
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(tp)}
        if part not in fields:
            raise KeyError(f"{key}: {getattr(tp, '__name__', tp)} has no field {part!r}")
        found = fields[part].metadata.get(_RANGE)
        tp = _dataclass_in(typing.get_type_hints(tp)[part])
    return found


def _dataclass_in(tp: Any) -> Any:
    """The dataclass of a field type (`X` or `X | None`), else None."""
    for arg in (tp, *typing.get_args(tp)):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def check_value(value: Any, rng: Range | None, name: str) -> None:
    """`ConfigError` naming `name` unless `value` (a number, a sequence of them, or None = unset)
    lies in `rng`."""
    if rng is None or value is None or isinstance(value, bool | str):
        return
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items:
        if isinstance(item, int | float) and not isinstance(item, bool) and not rng.contains(item):
            integer = isinstance(item, int)
            raise ConfigError(f"{name} must be {rng.describe(integer)}, got {item!r}")


_SEED = Range(ge=0)
_BATCH = Range(ge=1, le=MAX_BATCH)
_SAMPLER_STEPS = Range(ge=1, le=MAX_SAMPLER_STEPS)

#: The ranges of the numeric options that are not (yet) fields of a config dataclass in a module
#: the CLI can import without torch: command -> option (the library's parameter name) -> range.
#: The CLI checks each such flag against its row while parsing (`lplkit.cli.options`), the library
#: functions check their arguments with `check_options`. (Issue #26: these become config fields.)
OPTION_RANGES: dict[str, dict[str, Range]] = {
    "encode": {
        "res": Range(ge=1, le=8192),
        "batch_size": _BATCH,
        "workers": Range(ge=0, le=1024),
        "shard_size": Range(ge=1, le=MAX_BATCH),
        "limit": Range(ge=1),
        "min_side": Range(ge=1),
        "log_every": Range(ge=0.0),
    },
    "stats": {
        "samples": Range(ge=0),  # 0 = all
        "depth": Range(ge=0, le=64),
        "batch_size": _BATCH,
        "seed": _SEED,
        "bins": Range(ge=2, le=1 << 20),
    },
    "sample": {
        "n": _BATCH,
        "steps": _SAMPLER_STEPS,
        "guidance": Range(ge=0.0),
        "seed": _SEED,
        "batch_size": _BATCH,
        "labels": Range(ge=0),  # and < the run's class count (checked against the run)
    },
    "export": {"steps": _SAMPLER_STEPS},
    "eval": {
        "n": Range(ge=1),
        "seed": _SEED,
        "batch_size": _BATCH,
        "dirs_per_repeat": Range(ge=1, le=1 << 16),
        "dir_repeats": Range(ge=1, le=1024),
    },
    "demo": {
        "res": Range(ge=8, le=8192),
        "limit": Range(ge=1),
        "steps": Range(ge=1),
        "lpl_fraction": Range(ge=0.0, le=1.0),
        "lpl_weight": Range(ge=0.0),
        "batch_size": _BATCH,
        "lr": Range(gt=0.0),
        "ema_decay": Range(ge=0.0, lt=1.0),
        "n_samples": _BATCH,
        "sample_steps": _SAMPLER_STEPS,
        "guidance": Range(ge=0.0),
        "eval_n": Range(ge=1),
        "swd_dirs": Range(ge=1, le=1 << 16),
        "stats_samples": Range(ge=1),
        "seed": _SEED,
    },
}


def check_options(command: str, **values: Any) -> None:
    """Check keyword `values` against `OPTION_RANGES[command]` (`ConfigError` naming the option)."""
    table = OPTION_RANGES[command]
    for name, value in values.items():
        check_value(value, table[name], f"{command}: {name}")


def check_ranges(obj: Any, prefix: str = "") -> None:
    """Check every declared `Range` of dataclass instance `obj` (not descending into sub-configs,
    which check themselves when they are built)."""
    for f in dataclasses.fields(obj):
        check_value(getattr(obj, f.name), f.metadata.get(_RANGE), prefix + f.name)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` (from TOML, JSON or a `--set` string) as type `tp`; `ConfigError` naming `key`."""
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
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:  # `X | None`: X's own message ("expected an integer, got 4.0")
            raise ConfigError(errors[0])
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
        items = [coerce(v, inner, key) for v in value]
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
    if tp is int:  # exactly: an int, or a string of one (`--set steps=10`); never 1e3, 10.0, true
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:  # an int widens; a bool or a non-numeric string does not
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
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
    kwargs = {k: coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None
    check_ranges(obj, prefix)
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
