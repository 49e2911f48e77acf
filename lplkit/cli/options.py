"""CLI flags generated from typed config dataclasses: each option is declared once.

A command lists its flags as `lplkit.config.ConfigFlag(key, decl, help)` rows declared next to its
config (e.g. `lplkit.train.config.TRAIN_FLAGS`), `key` being the dotted field of the command's config
dataclass (e.g. `lpl.loss.norm` of `TrainConfig`). `with_config_flags` gives the command function a
typer signature built from those rows (the flag's type is the field's type), and
`lplkit.config.resolve_config` merges the values the user gave over `--config` and `--set`: no
`"key=value"` string round trip, no second list of names. (torchtitan builds its CLI from its config
sections the same way.)
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

import typer

from lplkit.config import ConfigFlag, Range, check_value, coerce, field_range, to_dict

__all__ = [
    "command_extras",
    "config_line",
    "field_default",
    "field_type",
    "with_config_flags",
]


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


def range_callback(
    rng: Range | None, parse: Any = None, whole: bool = False
) -> Callable[..., Any] | None:
    """A typer callback raising `ConfigError` (one line, exit 2) naming the flag when the parsed
    value is outside `rng`; with `parse` (a sequence field's type) the text is first read as that
    type (``1,2,3`` -> ``(1, 2, 3)``) so each item is checked; `whole`: each value of a repeated
    flag is one item (commas kept); None when there is nothing to do."""
    if rng is None and parse is None:
        return None

    def check(param: typer.CallbackParam, value: Any) -> Any:
        flag = str(next((o for o in param.opts if o.startswith("--")), param.name))  # as declared
        if isinstance(value, list | tuple):  # a repeated flag: its values joined like commas
            value = (list(value) if whole else ",".join(map(str, value))) if value else None
        if parse is not None and value is not None:
            value = coerce(value, parse, flag)
        check_value(value, rng, flag)
        return value

    return check


def _sequence_type(tp: Any) -> Any:
    """`tp` when it is a list/tuple type (a flag given as comma-separated text), else None."""
    return tp if typing.get_origin(tp) in (list, tuple) else None


def command_extras(
    *, config: bool = True, json_help: str = "Print the summary as JSON on stdout."
) -> tuple[inspect.Parameter, ...]:
    """The parameters every config-driven command shares besides its flags: `--config` and
    `--set` (when the command takes recipes) and `--json`."""

    def param(name: str, annotation: Any, option: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option
        )

    out = [param("json_out", bool, typer.Option(False, "--json", help=json_help))]
    if config:
        out[:0] = [
            param("config", str | None, typer.Option(
                None, "--config", help="TOML file of this command's settings (field = value).",
                rich_help_panel="Config",
            )),
            param("set_", list[str] | None, typer.Option(
                None, "--set", help="Dotted override, e.g. --set batch_size=8 (repeatable).",
                rich_help_panel="Config",
            )),
        ]  # fmt: skip
    return tuple(out)


def config_line(command: str, cfg: Any) -> str:
    """The resolved config of `command` as one line (printed at start unless --json): every
    field that is set, as TOML keys (`--config` takes them back)."""

    def flat(table: dict[str, Any], prefix: str = "") -> list[str]:
        items = []
        for k, v in table.items():
            if isinstance(v, dict):
                items += flat(v, f"{prefix}{k}.")
            elif v is not None:
                items.append(f"{prefix}{k}={','.join(map(str, v)) if isinstance(v, list) else v}")
        return items

    return f"{command} config: " + ", ".join(flat(to_dict(cfg)))


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
    under it; --help shows the dataclass default instead. A field without a default is required
    (refused by `lplkit.config.resolve_config` when no layer sets it). The function receives all
    parameters as keyword arguments; pass them to `resolve_config`.
    """
    flags = tuple(flags)
    sections = any("." in f.key for f in flags)  # a flat config keeps typer's one "Options" panel
    params = []
    for f in flags:
        tp = field_type(cls, f.key)
        try:
            shown, required = _default_text(f, field_default(cls, f.key)), f.required
        except KeyError:  # no default: required
            shown, required = None, True
        if required:
            shown = None
        # the text matches typer's own defaults (the app escapes every help text's brackets)
        help_text = f.help if shown is None else f"{f.help} [default: {shown}]"
        if required:
            help_text += " [required]"
        callback = range_callback(field_range(cls, f.key), _sequence_type(tp), f.whole)
        if f.is_argument:
            default = typer.Argument(
                None, help=help_text, callback=callback, metavar=f.decl, show_default=False
            )
        else:
            default = typer.Option(
                None,
                f.decl,  # a `repeat` flag: its annotation is a list, typer then takes it many times
                *f.aliases,
                help=help_text,
                callback=callback,
                rich_help_panel=help_panel(cls, f.key) if sections else None,
            )
        params.append(
            inspect.Parameter(
                f.param,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=(list[str] if f.repeat else _cli_type(tp)) | None,
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
