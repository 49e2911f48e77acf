"""The CLI surface shared by every command: mistyped flags, --help, aliases, the progress line."""

from __future__ import annotations

import io
import re

import pytest
from helpers.cli import run_cli

from lplkit.cli.app import COMMAND_MODULES


def _command(name: str):
    from typer.main import get_command

    from lplkit.cli.app import app

    group = get_command(app)
    return group, group.get_command(group.make_context("lplkit", [name]), name)  # type: ignore[attr-defined]


def _long_flags(name: str) -> list[str]:
    _, cmd = _command(name)
    return [o for p in cmd.params for o in p.opts if o.startswith("--") and o != "--help"]


def _typo(flag: str) -> str:
    """Swap two inner letters: --lpl-norm -> --lpl-nomr."""
    body = flag[2:]
    i = len(body) // 2
    return (
        "--" + body[: i - 1] + body[i] + body[i - 1] + body[i + 1 :]
        if len(body) > 3
        else flag + "x"
    )


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_mistyped_flag_is_a_usage_error_with_suggestion(name, capsys):
    flag = max(_long_flags(name), key=len)  # the longest flag: its typo is unambiguous
    typo = _typo(flag)
    assert typo != flag
    code, _, err = run_cli([name, typo, "x"], capsys)
    assert code == 2, err
    assert f"Usage: lplkit {name}" in err
    assert f"did you mean {flag}?" in err
    assert "internal error" not in err


def test_lpl_nrom_suggests_lpl_norm(capsys):
    code, _, err = run_cli(["train", "--lpl-nrom", "x"], capsys)
    assert code == 2 and "did you mean --lpl-norm?" in err and "Usage: lplkit train" in err


def test_unknown_flag_without_close_match_still_exit_2(capsys):
    code, _, err = run_cli(["train", "--zzzzzzzzzz"], capsys)
    assert code == 2 and "no such option: --zzzzzzzzzz" in err and "did you mean" not in err


def _help(args: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # one option per line: nothing wraps
    code, out, err = run_cli([*args, "--help"], capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize("name", ["", *COMMAND_MODULES])
def test_help_shows_no_bool_metavar(name, capsys, monkeypatch):
    text = _help([name] if name else [], capsys, monkeypatch)
    assert "--help" in text
    assert "<bool>" not in text


def test_train_help_shows_config_defaults(capsys, monkeypatch):
    from lplkit.train.config import TrainConfig

    text = _help(["train"], capsys, monkeypatch)
    cfg = TrainConfig()
    expected = {
        "--steps": cfg.steps,
        "--model": cfg.model.name,
        "--objective": cfg.objective.kind,
        "--batch-size": cfg.batch_size,
        "--lr": cfg.optim.lr,
        "--lpl": "no-lpl",
        "--bf16": "no-bf16",
    }
    lines = text.splitlines()
    for flag, value in expected.items():
        (line,) = [ln for ln in lines if re.search(rf"│ {re.escape(flag)} ", ln)]
        assert f"[default: {value}]" in line, line


def test_train_help_groups_its_flags_by_config_section(capsys, monkeypatch):
    """Each generated flag sits in the panel of its config section (top-level fields in "Run"), so
    one long on/off flag no longer widens every option's name column at 80 columns."""
    from lplkit.cli.train import TRAIN_FLAGS

    text = _help(["train"], capsys, monkeypatch)
    panel, seen = None, {}
    for line in text.splitlines():
        if m := re.match(r"╭─ (.+?) ─", line):
            panel = m.group(1)
        elif m := re.match(r"│ (--[a-z0-9-]+)", line):
            seen[m.group(1)] = panel
    sections = {
        "lpl": "Latent Perceptual Loss", "optim": "Optimizer", "model": "Model and objective",
        "objective": "Model and objective", "ckpt": "Checkpoints and logs",
        "log": "Checkpoints and logs",
    }  # fmt: skip
    for flag in TRAIN_FLAGS:
        head = flag.key.split(".")[0]
        want = sections.get(head, "Run") if "." in flag.key else "Run"
        assert seen[flag.decl.split("/")[0]] == want, flag


def test_stats_accepts_the_train_spellings_and_the_old_ones():
    group, cmd = _command("stats")
    parent = group.make_context("lplkit", ["stats"])
    new = cmd.make_context(
        "stats", ["s.zarr", "--vae-subfolder", "vae", "--lpl-depth", "2"], parent=parent
    )
    old = cmd.make_context("stats", ["s.zarr", "--subfolder", "vae", "--depth", "2"], parent=parent)
    assert new.params["subfolder"] == old.params["subfolder"] == "vae"
    assert new.params["depth"] == old.params["depth"] == 2


def test_live_progress_renders_counts_and_rate(monkeypatch):
    from rich.console import Console

    from lplkit.cli import output
    from lplkit.cli.progress import LiveProgress

    buf = io.StringIO()
    monkeypatch.setattr(output, "console", Console(file=buf, width=120, force_terminal=False))
    with LiveProgress("encoding", rate_unit="img") as bar:
        bar.update(3, 10)
        bar.update(10, info="done")
    text = buf.getvalue()
    assert "encoding" in text and "10/10" in text and "done" in text


def test_live_progress_disabled_writes_nothing(monkeypatch):
    from rich.console import Console

    from lplkit.cli import output
    from lplkit.cli.progress import LiveProgress

    buf = io.StringIO()
    monkeypatch.setattr(output, "console", Console(file=buf, width=120, force_terminal=False))
    with LiveProgress("train", total=5, enabled=False) as bar:
        bar.update(1, info="x")
        bar.update(5)
    assert buf.getvalue() == ""
