"""CLI skeleton: --help must not import torch; errors become one line + exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from lplkit.cli.app import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'diffusers', 'zarr', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_version_and_module_entry_point(tmp_path):
    """`python -m lplkit --version` prints the version pyproject.toml declares (the package's
    `__version__` is a second copy that a release bump can miss), and `python -m lplkit` runs the
    real app: a command on a missing store gives that command's one-line error and exit code."""
    import tomllib

    from helpers.cli import REPO, subprocess_env

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    res = subprocess.run([sys.executable, "-m", "lplkit", "--version"], capture_output=True,
                         text=True, timeout=120, env=subprocess_env())  # fmt: skip
    assert res.returncode == 0 and res.stdout == f"lplkit {declared}\n"
    missing = tmp_path / "nope.zarr"
    res = subprocess.run([sys.executable, "-m", "lplkit", "info", str(missing)],
                         capture_output=True, text=True, timeout=120, env=subprocess_env())  # fmt: skip
    assert res.returncode == 4 and str(missing) in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_lplkit_error_is_one_line_with_exit_code(capsys):
    from lplkit.cli import output
    from lplkit.errors import StoreMismatchError

    output.state.debug = False
    code = output.handle_exception(StoreMismatchError("store x.zarr was made with AE a, not b"))
    err = capsys.readouterr().err.strip()
    assert code == StoreMismatchError.exit_code == 4
    assert "x.zarr" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_unexpected_error_suggests_debug(capsys):
    from lplkit.cli import output

    output.state.debug = False
    assert output.handle_exception(RuntimeError("boom")) == 70
    assert "--debug" in capsys.readouterr().err


@pytest.mark.parametrize(
    "exc_name", ["ConfigError", "SourceError", "StoreError", "CheckpointError"]
)
def test_errors_subclass_builtins(exc_name):
    from lplkit import errors

    exc = getattr(errors, exc_name)
    assert issubclass(exc, errors.LplkitError)
    assert issubclass(exc, (ValueError, OSError, RuntimeError))


def test_long_error_stays_on_one_line(capsys):
    from lplkit.cli import output
    from lplkit.errors import EvaluationError

    output.state.debug = False
    msg = "FID needs the Inception weights " + "x" * 300 + " (or run with --metrics swd)"
    output.handle_exception(EvaluationError(msg))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("--metrics swd)")
