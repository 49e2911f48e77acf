"""The `lplkit` typer application.

Each command lives in its own module `lplkit/cli/<name>.py` exposing `register(app)`. Command modules
import only typer/rich at module level; torch, diffusers and zarr are imported inside the command body,
so `lplkit --help` never imports torch.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from lplkit import __version__
from lplkit.cli import output

# Order = order in `lplkit --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "encode",
    "eval",
    "stats",
    "train",
    "sample",
    "export",
    "info",
    "verify",
    "upgrade",
    "demo",
)


def _hide_flag_types(params: list[Any]) -> None:
    """On/off flags take no value: show no `<bool>` type next to them in --help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _escape_markup(text: str | None) -> str | None:
    """Help text shown literally: rich markup would eat `[wandb]` in `pip install 'lplkit[wandb]'`."""
    from rich.markup import escape

    return None if text is None else escape(text)


def _reflow(text: str | None) -> str | None:
    """A docstring's paragraphs as single lines: rich keeps the source's line breaks, which broke
    sentences mid-line at any terminal width other than the source's."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class _CommandInterrupted(Exception):
    """Carries a command's KeyboardInterrupt past typer, which would turn it into a bare exit
    status 130 and drop the command's one-line summary of what was left."""

    def __init__(self, command: str, interrupt: KeyboardInterrupt) -> None:
        super().__init__(command)
        self.command, self.interrupt = command, interrupt


class _Command(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every help string of every command, declared anywhere, is escaped once here.
        self.help = _escape_markup(_reflow(self.help))
        for param in self.params:
            if getattr(param, "help", None):
                param.help = _escape_markup(param.help)  # type: ignore[attr-defined]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _hide_flag_types(self.get_params(ctx))
        super().format_help(ctx, formatter)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _CommandInterrupted(ctx.info_name or "lplkit", exc) from exc
        except Exception as exc:
            from lplkit.errors import Preempted

            if isinstance(exc, Preempted):
                # Stopped and saved: exit 75 even if torchrun, seeing another rank exit first,
                # signals this process while it exits.
                from lplkit.preemption import ignore_stop_signals

                ignore_stop_signals()
            raise


class _Group(TyperGroup):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        _hide_flag_types(self.get_params(ctx))
        super().format_help(ctx, formatter)


class _App(typer.Typer):
    """Every command of the app gets the --help rendering of `_Command`."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or _Command, **kwargs)


app = _App(
    cls=_Group,
    name="lplkit",
    help="Latent diffusion with a Latent Perceptual Loss: encode -> stats -> train -> sample -> eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lplkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    output.state.debug = debug


for _name in COMMAND_MODULES:
    importlib.import_module(f"lplkit.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: runs the app and turns LplkitError into one line + exit code."""
    args = sys.argv[1:] if argv is None else argv
    output.state.debug = "--debug" in args
    shown = warnings.showwarning
    warnings.showwarning = output.show_warning  # notices as one line, not Python's two
    try:
        # Without standalone mode typer returns (not raises) the status of a `typer.Exit` and of a
        # Ctrl-C outside a command: exit with it, never 0 for an interrupted command.
        status = app(args=args, prog_name="lplkit", standalone_mode=False)
    except _CommandInterrupted as exc:
        sys.exit(output.handle_interrupt(exc.command, exc.interrupt))
    except KeyboardInterrupt as exc:
        sys.exit(output.handle_interrupt("lplkit", exc))
    except Exception as exc:
        sys.exit(output.handle_exception(exc))
    finally:
        warnings.showwarning = shown
    sys.exit(status if isinstance(status, int) else 0)
