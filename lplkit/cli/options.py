"""CLI flags generated from typed config dataclasses: each option is declared once.

A command lists its flags as `ConfigFlag(key, decl, help)` rows, `key` being the dotted field of
the command's config dataclass (e.g. `lpl.loss.norm` of `TrainConfig`). `with_config_flags` gives the
command function a typer signature built from those rows (the flag's type is the field's type), and
`flags_table` turns the values the user gave into a nested table of typed values that
`lplkit.config.load_config(..., flags=)` merges over `--config` and `--set`: no `"key=value"`
string round trip, no second list of names. (torchtitan builds its CLI from its config sections
the same way.)
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import typer

from lplkit.config import Range, check_value, field_range

__all__ = [
    "ConfigFlag",
    "config_option",
    "field_default",
    "field_type",
    "flags_table",
    "ranged_option",
    "with_config_flags",
]


@dataclass(frozen=True)
class ConfigFlag:
    """One CLI flag setting one config field.

    Attributes:
        key: dotted config field, e.g. ``lpl.loss.norm``.
        decl: the flag, e.g. ``--lpl-norm``; a bool field takes ``--lpl/--no-lpl``.
        help: one line for `--help`.
    """

    key: str
    decl: str
    help: str

    @property
    def param(self) -> str:
        """The Python parameter name: ``--lpl-norm`` -> ``lpl_norm``."""
        return self.decl.split("/")[0].lstrip("-").replace("-", "_")


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def field_type(cls: type, key: str) -> Any:
    """The type hint of dotted field `key` of dataclass `cls` (Optional stripped)."""
    tp: Any = cls
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp):
            raise KeyError(f"{key}: {part} is below a non-table field")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise KeyError(f"{key}: {getattr(tp, '__name__', tp)} has no field {part!r}")
        tp = _strip_optional(hints[part])
    return tp


def _cli_type(tp: Any) -> type:
    """bool / int / float pass through; anything else (Literal, unions, lists) is parsed as a
    string by the config loader, which names the key in its error."""
    return tp if tp in (bool, int, float) else str


def field_default(cls: type, key: str) -> Any:
    """The default value of dotted field `key` of dataclass `cls` (also of a dataclass with
    required fields: read from the field declarations, not from an instance)."""
    node: Any = None
    for i, part in enumerate(key.split(".")):
        if i:
            node = getattr(node, part)
            continue
        f = {f.name: f for f in dataclasses.fields(cls)}[part]
        if f.default is not dataclasses.MISSING:
            node = f.default
        elif f.default_factory is not dataclasses.MISSING:
            node = f.default_factory()
        else:
            raise KeyError(f"{cls.__name__}.{part} has no default")
    return node


def _default_text(flag: ConfigFlag, value: Any) -> str | None:
    """How --help shows a default: the flag spelling for a bool flag, the value otherwise;
    None when there is nothing to show (unset, empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        on, _, off = flag.decl.partition("/")
        return (on if value else off or on).lstrip("-") if off else str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def range_callback(rng: Range | None) -> Callable[..., Any] | None:
    """A typer option callback raising `ConfigError` (one line, exit 2) naming the flag when the
    parsed value is outside `rng`; None when there is no range to check."""
    if rng is None:
        return None

    def check(param: typer.CallbackParam, value: Any) -> Any:
        flag = next((o for o in param.opts if o.startswith("--")), param.name)  # as declared
        check_value(value, rng, str(flag))
        return value

    return check


def ranged_option(default: Any, *decls: str, rng: Range, **kwargs: Any) -> Any:
    """`typer.Option(default, *decls, **kwargs)` whose value must lie in `rng`."""
    return typer.Option(default, *decls, callback=range_callback(rng), **kwargs)


def config_option(cls: type, key: str, *decls: str, **kwargs: Any) -> Any:
    """`typer.Option` of config field `key` of dataclass `cls`: its default and its range."""
    rng = field_range(cls, key)
    if rng is None:
        raise KeyError(f"{cls.__name__}.{key} declares no range")
    return ranged_option(field_default(cls, key), *decls, rng=rng, **kwargs)


#: --help panel titles of config sections (a section not listed shows its own name)
PANEL_TITLES = {
    "": "Run",
    "objective": "Model and objective",
    "model": "Model and objective",
    "optim": "Optimizer",
    "lpl": "Latent Perceptual Loss",
    "ckpt": "Checkpoints and logs",
    "log": "Checkpoints and logs",
}


def help_panel(cls: type, key: str) -> str:
    """The --help panel of dotted field `key`: its top-level section of `cls` (a field that is
    not in a section, e.g. `steps`, is in "Run"). Panels keep each options table narrow: one long
    on/off flag no longer widens the name column of every option at 80 columns."""
    head = key.split(".")[0]
    section = head if "." in key and dataclasses.is_dataclass(field_type(cls, head)) else ""
    return PANEL_TITLES.get(section, section.replace("_", " ").capitalize())


def with_config_flags(
    cls: type, flags: Iterable[ConfigFlag], extra: Iterable[inspect.Parameter] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: give a `**kwargs` command function the typer signature of `flags` + `extra`.

    Every generated flag defaults to None (= not given), so that --config and --set stay visible
    under it; --help shows the dataclass default instead. The function receives all parameters as
    keyword arguments; pass them to `flags_table` to get the nested overrides.
    """
    flags = tuple(flags)
    params = []
    for f in flags:
        tp = _cli_type(field_type(cls, f.key))
        shown = _default_text(f, field_default(cls, f.key))
        # the text matches typer's own defaults (the app escapes every help text's brackets)
        help_text = f.help if shown is None else f"{f.help} [default: {shown}]"
        params.append(
            inspect.Parameter(
                f.param,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    None,
                    f.decl,
                    help=help_text,
                    callback=range_callback(field_range(cls, f.key)),
                    rich_help_panel=help_panel(cls, f.key),
                ),
                annotation=tp | None,
            )
        )
    params.extend(extra)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate CLI parameter names in {names}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return decorate


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
