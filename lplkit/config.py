"""Typed dataclass configs: TOML loading, dotted `key=value` overrides, resolved dumps.

Every config is a (possibly nested) dataclass. `load_config(cls, path, overrides)` builds one from a
TOML file (recipes in `pipelines/`) and `--set a.b=value` strings; unknown keys and ill-typed values
raise `ConfigError` naming the key, so a typo never silently falls back to a default.

Numbers are typed exactly (an int field takes an integer, never a float or a bool) and each
numeric field declares its valid `Range` once, as field metadata (`ranged(default, ge=1)`); every
config built here is checked against those ranges before anything uses it, and the CLI checks its
flags against the same declarations (`lplkit.cli.options`).

A command's options are `ConfigFlag` rows of its config, declared next to it (e.g.
`lplkit.train.config.TRAIN_FLAGS`); `resolve_config` layers defaults <- a saved record <- `--config`
<- `--set` <- flags into the config the command runs with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
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


@dataclass(frozen=True)
class ConfigFlag:
    """One CLI flag setting one config field: a command's options are these rows of its config.

    Attributes:
        key: dotted config field, e.g. ``lpl.loss.norm``.
        decl: the flag, e.g. ``--lpl-norm``; a bool field takes ``--lpl/--no-lpl``; a name without
            dashes (``STORE``) is a positional argument.
        help: one line for `--help`.
        aliases: further spellings of the same flag (``--guidance`` for ``--cfg``).
        name: the parameter name when it is not the flag's (kept where callers read it).
        required: the command needs it although the library field has a default (``--res``).
        repeat: a list field whose flag may be given several times (``--text-encoder A
            --text-encoder B``); each value may also hold comma-separated items.
        whole: a `repeat` flag whose values are taken whole, commas included (``--prompt``).
    """

    key: str
    decl: str
    help: str
    aliases: tuple[str, ...] = ()
    name: str | None = None
    required: bool = False
    repeat: bool = False
    whole: bool = False

    @property
    def param(self) -> str:
        """The Python parameter name: ``--lpl-norm`` -> ``lpl_norm``."""
        return self.name or self.decl.split("/")[0].lstrip("-").replace("-", "_").lower()

    @property
    def is_argument(self) -> bool:
        """A positional argument (``STORE``) rather than an option."""
        return not self.decl.startswith("-")

    @property
    def label(self) -> str:
        """How errors name it: ``--lpl-norm``, ``STORE``."""
        return self.decl.split("/")[0]


def flags_table(flags: Iterable[ConfigFlag], values: Mapping[str, Any]) -> dict[str, Any]:
    """Nested `{section: {field: value}}` of the flags given (value not None), typed as parsed."""
    out: dict[str, Any] = {}
    for f in flags:
        value = values.get(f.param)
        if value is None:
            continue
        *sections, last = f.key.split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
        node[last] = value
    return out


def flag_values(flags: Iterable[ConfigFlag], args: Sequence[str]) -> dict[str, Any]:
    """`{param: value}` of command-line style `args` (``["--lpl", "--lpl-norm", "dataset"]``) for
    library callers that speak a command's flags (pipelines/); values stay strings, typed when the
    config is built. `ConfigError` naming an unknown flag or one without its value."""
    spellings: dict[str, tuple[ConfigFlag, Any]] = {}
    for f in flags:
        if f.is_argument:
            continue
        on, _, off = f.decl.partition("/")
        if off:
            spellings[on], spellings[off] = (f, True), (f, False)
        for decl in (on, *f.aliases):
            spellings.setdefault(decl, (f, None))
    out: dict[str, Any] = {}
    it = iter(args)
    for arg in it:
        flag, _, inline = arg.partition("=")
        if flag not in spellings:
            raise ConfigError(f"unknown flag {flag!r}")
        row, switch = spellings[flag]
        if switch is not None:
            out[row.param] = switch
            continue
        value = inline if inline else next(it, None)
        if value is None:
            raise ConfigError(f"{flag} expects a value")
        if row.whole:  # every value one item, commas included
            out.setdefault(row.param, []).append(value)
            continue
        if row.repeat and row.param in out:
            value = f"{out[row.param]},{value}"
        out[row.param] = value
    return out


def check_fields(cls: type, command: str, **values: Any) -> None:
    """Check keyword `values` of a library call against the declared ranges of the same-named
    fields of config `cls` (`ConfigError` naming ``command: field``)."""
    for name, value in values.items():
        check_value(value, field_range(cls, name), f"{command}: {name}")


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
    return from_dict(cls, _layered(path, overrides, base, flags))


def _layered(
    path: str | Path | None,
    overrides: list[str] | None,
    base: dict[str, Any] | None,
    flags: dict[str, Any] | None,
) -> dict[str, Any]:
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
    return merge(data, flags or {})


def resolve_config(
    cls: type[T],
    flags: Iterable[ConfigFlag],
    values: Mapping[str, Any],
    *,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """A command's config: defaults <- `base` (a saved run's or store's record) <- TOML `config`
    <- `--set` `overrides` <- the flags' `values` (`{param: value}`, None = not given).

    A field without a default (or a `required` flag's) that no layer sets is refused naming its
    flag, as a missing required option would be.
    """
    flags = tuple(flags)
    data = _layered(config, overrides, base, flags_table(flags, values))
    labels = {f.key: f.label for f in flags}
    needed = [f.key for f in flags if f.required]
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            needed.append(f.name)
    for key in needed:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise ConfigError(f"missing {labels.get(key, key)} (or {key} in --config / --set)")
    return from_dict(cls, data)
