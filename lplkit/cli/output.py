"""Shared CLI rendering: the rich consoles, --json output, and error -> one line + exit code."""

from __future__ import annotations

import difflib
import json
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

try:  # typer >= 0.22 vendors click and raises its own copies of click's exceptions
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

console = Console(stderr=True, highlight=False)


@dataclass
class _State:
    debug: bool = False


state = _State()


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` for the CLI: a library notice (a recovered stale lock, an explicit
    --vae that differs, ...) as one line `warning: ...` on stderr; the Python form with --debug."""
    if state.debug:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    from rich.markup import escape

    console.print(
        f"[yellow]warning:[/yellow] {escape(' '.join(str(message).split()))}", soft_wrap=True
    )


def emit_json(data: Any) -> None:
    """Machine-readable result on stdout (everything human goes to stderr)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def handle_exception(exc: BaseException) -> int:
    """Print one line for expected errors (full traceback with --debug); return the exit code."""
    from rich.markup import escape

    from lplkit.errors import LplkitError, Preempted

    if isinstance(exc, typer.Exit):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return handle_interrupt("lplkit", exc)
    if isinstance(exc, typer.Abort):
        console.print("[red]aborted[/red]")
        return 130
    if isinstance(exc, click_exceptions.NoSuchOption):
        return _no_such_option(exc)
    if isinstance(exc, click_exceptions.ClickException):
        exc.show()
        return int(exc.exit_code)
    if state.debug:
        traceback.print_exception(exc)
    if isinstance(exc, Preempted):  # an expected stop, not a failure: the message says what to do
        console.print(f"[yellow]{escape(str(exc))}[/yellow]", soft_wrap=True)
        return exc.exit_code
    if isinstance(exc, LplkitError):
        console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        return exc.exit_code
    console.print(
        f"[bold red]internal error:[/bold red] {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
        soft_wrap=True,
    )
    return 70


def handle_interrupt(command: str, exc: KeyboardInterrupt) -> int:
    """Ctrl-C: one line saying what was left (the library's `Interrupted` message, else a generic
    one), exit 130 = 128 + SIGINT, as shells expect."""
    from rich.markup import escape

    from lplkit.errors import Interrupted

    if state.debug:
        traceback.print_exception(exc)
    text = str(exc) if isinstance(exc, Interrupted) and str(exc) else f"{command} interrupted"
    console.print(f"[red]{escape(text)}[/red]", soft_wrap=True)
    return 130


def closest_option(name: str, ctx: Any) -> str | None:
    """The valid option of `ctx`'s command spelled closest to `name` (None if nothing is close)."""
    if ctx is None:
        return None
    names = [o for p in ctx.command.get_params(ctx) for o in (*p.opts, *p.secondary_opts)]
    names = [o for o in names if o.startswith("-")]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return close[0] if close else None


def _no_such_option(exc: Any) -> int:
    """A mistyped flag: the usage line, the closest valid flag, exit 2 (a usage error)."""
    ctx = exc.ctx
    if ctx is not None:
        console.print(ctx.get_usage(), markup=False, highlight=False)
        console.print(f"Try '{ctx.command_path} --help' for help.", markup=False)
    hint = closest_option(exc.option_name, ctx)
    suggestion = f" (did you mean {hint}?)" if hint else ""
    console.print(
        f"[bold red]error:[/bold red] no such option: {exc.option_name}{suggestion}",
        soft_wrap=True,
        highlight=False,
    )
    return 2
