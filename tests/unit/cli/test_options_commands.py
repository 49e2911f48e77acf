"""Every command's options are the `ConfigFlag` rows of its config (issue #26 item 1): the typer
parameters are generated from them, `--config` and `--set` set the same fields as the flags, and a
bad value from any of them is one line, exit 2, before anything is written."""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import numpy as np
import pytest
from helpers.cli import run_cli

from lplkit.config import ConfigFlag, field_range, flag_values, resolve_config
from lplkit.demo.config import DEMO_FLAGS, DemoConfig
from lplkit.diffusion.export_config import EXPORT_FLAGS, ExportConfig
from lplkit.diffusion.sample_config import SAMPLE_FLAGS, SampleConfig
from lplkit.metrics.config import EVAL_FLAGS, EvalConfig
from lplkit.stats.config import STATS_FLAGS, StatsConfig
from lplkit.store.encode_config import ENCODE_FLAGS, EncodeConfig
from lplkit.store.tools_config import (
    INFO_FLAGS,
    UPGRADE_FLAGS,
    VERIFY_FLAGS,
    InfoConfig,
    UpgradeConfig,
    VerifyConfig,
)
from lplkit.text.config import ENCODE_TEXT_FLAGS, TextConfig
from lplkit.train.config import TRAIN_FLAGS, TrainConfig

CONFIGS: dict[str, tuple[type, tuple[ConfigFlag, ...]]] = {
    "encode": (EncodeConfig, ENCODE_FLAGS),
    "stats": (StatsConfig, STATS_FLAGS),
    "sample": (SampleConfig, SAMPLE_FLAGS),
    "eval": (EvalConfig, EVAL_FLAGS),
    "export": (ExportConfig, EXPORT_FLAGS),
    "demo": (DemoConfig, DEMO_FLAGS),
    "train": (TrainConfig, TRAIN_FLAGS),
    "encode-text": (TextConfig, ENCODE_TEXT_FLAGS),
    "info": (InfoConfig, INFO_FLAGS),
    "verify": (VerifyConfig, VERIFY_FLAGS),
    "upgrade": (UpgradeConfig, UPGRADE_FLAGS),
}
#: Parameters a command has besides its config's flags.
SHARED = {"config", "set_", "json_out"}
#: Commands whose settings are not a recipe: no --config / --set.
NO_RECIPE = {"export", "encode-text", "info", "verify", "upgrade"}


def _command(name: str):
    from typer.main import get_command

    from lplkit.cli.app import app

    group = get_command(app)
    ctx = group.make_context("lplkit", [name])
    return ctx, group.get_command(ctx, name)  # type: ignore[attr-defined]


def _parsed(name: str, args: list[str]) -> dict[str, typing.Any]:
    """The parameter values `lplkit NAME ARGS` hands its command function (the CLI's own parse)."""
    parent, cmd = _command(name)
    return dict(cmd.make_context(name, list(args), parent=parent).params)


def _resolve(name: str, args: list[str]):
    cls, flags = CONFIGS[name]
    params = _parsed(name, args)
    return resolve_config(
        cls, flags, params, config=params.get("config"), overrides=params.get("set_")
    )


def test_every_command_of_the_app_has_config_rows():
    from typer.main import get_command

    from lplkit.cli.app import app

    group = get_command(app)
    assert set(group.commands) == set(CONFIGS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_option_is_generated_from_a_config_row(name):
    """The command's parameters are exactly its rows (+ --config/--set/--json): each with the
    row's spellings, each row a field of the config."""
    cls, flags = CONFIGS[name]
    _, cmd = _command(name)
    params = {p.name: p for p in cmd.params if p.name != "help"}
    shared = SHARED - {"config", "set_"} if name in NO_RECIPE else SHARED
    assert set(params) == {f.param for f in flags} | shared
    for f in flags:
        on, _, off = f.decl.partition("/")
        p = params[f.param]
        if f.is_argument:
            assert p.param_type_name == "argument" and p.opts == [f.key]
            continue
        assert p.opts == [on, *f.aliases], f
        assert p.secondary_opts == ([off] if off else []), f
        assert f.key.split(".")[-1] in {x.name for x in dataclasses.fields(_owner(cls, f.key))}


def _owner(cls: type, key: str) -> type:
    """The dataclass holding dotted field `key` (``lpl.loss.norm`` -> the LPL loss config)."""
    for part in key.split(".")[:-1]:
        tp = typing.get_type_hints(cls)[part]
        cls = next(a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a))
    return cls


@pytest.mark.parametrize("name", CONFIGS)
def test_help_lists_every_row(name, capsys, monkeypatch):
    _, flags = CONFIGS[name]
    monkeypatch.setenv("COLUMNS", "400")
    code, out, err = run_cli([name, "--help"], capsys)
    assert code == 0, err
    listed = set(re.findall(r"(--[a-z0-9-]+)", out)) | set(re.findall(r"\b([A-Z]{2,})\b", out))
    for f in flags:
        for decl in (*f.decl.split("/"), *f.aliases):
            assert decl in listed, (name, decl)
    assert ("--config" in listed) == (name not in NO_RECIPE)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n not in ("train", "info")])
def test_every_numeric_field_of_a_command_config_declares_a_range(name):
    cls, _ = CONFIGS[name]
    hints = typing.get_type_hints(cls)
    numeric = []
    for f in dataclasses.fields(cls):
        args = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        leaves = [typing.get_args(a)[0] if typing.get_origin(a) is tuple else a for a in args]
        if any(leaf in (int, float) for leaf in leaves):
            numeric.append(f.name)
    assert numeric
    assert [k for k in numeric if field_range(cls, k) is None] == []


def test_sample_flag_beats_set_beats_config_beats_default(tmp_path):
    recipe = tmp_path / "sample.toml"
    recipe.write_text('run = "runs/a"\nn = 4\nsteps = 7\nseed = 3\nlabels = [1, 2]\n')
    from_file = _resolve("sample", ["--config", str(recipe)])
    assert (from_file.run, from_file.n, from_file.steps, from_file.seed) == ("runs/a", 4, 7, 3)
    assert from_file.labels == (1, 2) and from_file.batch_size == 32  # the default
    layered = _resolve("sample", ["--config", str(recipe), "--set", "n=5", "--set", "steps=9",
                                  "--steps", "11", "--labels", "0,3"])  # fmt: skip
    assert (layered.n, layered.steps, layered.labels) == (5, 11, (0, 3))  # --set > file, flag > all
    assert _resolve("sample", ["--run", "r", "--guidance", "2.5"]).guidance == 2.5  # the alias


def test_eval_and_encode_take_recipes_and_set(tmp_path):
    recipe = tmp_path / "eval.toml"
    recipe.write_text('samples = "s.npz"\nref = "r.zarr"\nmetrics = "swd"\nswd_dirs = 64\n')
    cfg = _resolve("eval", ["--config", str(recipe), "--set", "swd_repeats=2", "--n", "8"])
    assert (cfg.samples, cfg.ref, cfg.metrics) == ("s.npz", "r.zarr", "swd")
    assert (cfg.swd_dirs, cfg.swd_repeats, cfg.n, cfg.batch_size) == (64, 2, 8, 64)
    enc = _resolve("encode", ["--set", "dataset=openmoji", "--set", "out=o.zarr",
                              "--set", "res=32", "--res", "64", "--flip"])  # fmt: skip
    assert (enc.dataset, enc.out, enc.res, enc.flip) == ("openmoji", "o.zarr", 64, True)
    assert (enc.shard_size, enc.shard_mb) == (None, None)  # shards of the default 128 MiB


def test_a_repeatable_flag_collects_every_use_and_commas():
    from lplkit.config import flag_values
    from lplkit.store.encode_config import ENCODE_FLAGS

    base = ["--dataset", "d", "--out", "o.zarr", "--res", "32"]
    args = ["--text-encoder", "org/clip:text_encoder", "--text-encoder", "org/t5,dir/t5b"]
    want = ["org/clip:text_encoder", "org/t5", "dir/t5b"]
    assert _resolve("encode", [*base, *args]).text_encoder == want
    assert _resolve("encode", [*base, "--text-encoder", "org/t5"]).text_encoder == ["org/t5"]
    assert flag_values(ENCODE_FLAGS, args)["text_encoder"] == ",".join(want)


def test_stats_positional_store_and_old_spellings_resolve(tmp_path):
    recipe = tmp_path / "stats.toml"
    recipe.write_text('store = "from-file.zarr"\nsamples = 0\n')
    cfg = _resolve("stats", ["--config", str(recipe), "--depth", "2", "--no-post-quant-conv"])
    assert (cfg.store, cfg.samples, cfg.depth, cfg.post_quant_conv) == (
        "from-file.zarr",
        0,
        2,
        False,
    )
    assert _resolve("stats", ["s.zarr", "--set", "bins=64"]).store == "s.zarr"


def test_demo_base_none_is_from_scratch():
    assert _resolve("demo", ["--base", "none", "--res", "32"]).base is None
    assert _resolve("demo", []).base == "openmoji-base"


def test_library_flag_values_resolve_like_the_train_command(tmp_path):
    """pipelines/ resolve train flags without the CLI; the CLI's own parse is the oracle."""
    from lplkit.train.run_dir import resolve_train_config

    args = ["--lpl", "--lpl-start", "30", "--lpl-norm", "dataset", "--no-bf16", "--objective=eps",
            "--lpl-max-timestep", "200"]  # fmt: skip
    via_cli = _resolve("train", args)
    assert resolve_train_config(None, [], flag_values(TRAIN_FLAGS, args)) == via_cli
    assert (via_cli.lpl.start_step, via_cli.lpl.loss.norm, via_cli.lpl.snr_min) == (
        30,
        "dataset",
        None,
    )


@pytest.mark.parametrize(
    ("name", "args", "named"),
    [
        ("sample", ["--run", "R", "--set", "n=0"], "n must be"),
        ("sample", ["--run", "R", "--labels", "1,-2"], "--labels must be"),
        ("sample", ["--run", "R", "--labels", "1,x"], "--labels"),
        ("sample", ["--set", "n=2"], "missing --run"),
        ("eval", ["--samples", "S", "--ref", "R", "--set", "swd_dirs=0"], "swd_dirs must be"),
        ("eval", ["--samples", "S", "--ref", "R", "--set", "seed=-1"], "seed must be"),
        ("encode", ["--dataset", "D", "--out", "OUT", "--res", "16", "--set", "shard_size=0"],
         "shard_size must be"),
        ("encode", ["--dataset", "D", "--out", "OUT", "--res", "8", "--set", "dtype=f8"], "--dtype"),
        ("encode", ["--dataset", "D", "--out", "OUT"], "missing --res"),
        ("stats", ["S", "--set", "bins=1"], "bins must be"),
        ("stats", ["--samples", "4"], "missing STORE"),
        ("demo", ["--out", "OUT", "--set", "lpl_fraction=2"], "lpl_fraction must be"),
        ("export", ["--run", "R"], "missing --out"),
        ("sample", ["--run", "R", "--set", "nn=2"], "unknown config key(s) nn"),
    ],
)  # fmt: skip
def test_a_bad_value_from_any_layer_is_one_line_exit_2_and_writes_nothing(
    name, args, named, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # OUT would be created here
    code, _, err = run_cli([name, *args], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert named in lines[0] and "internal error" not in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_in_a_recipe_names_its_key(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('samples = "S"\nref = "R"\nbatch_size = 0\n')
    code, _, err = run_cli(["eval", "--config", str(recipe)], capsys)
    assert code == 2 and "batch_size must be" in err and len(err.strip().splitlines()) == 1


def test_eval_json_records_the_resolved_config_and_prints_it_otherwise(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    recipe = tmp_path / "eval.toml"
    recipe.write_text(f'samples = "{tmp_path / "a.npz"}"\nmetrics = "spectrum"\n')
    args = ["eval", "--config", str(recipe), "--ref", str(tmp_path / "b.npz"), "--set", "n=4"]
    code, out, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)["config"]
    assert (record["samples"], record["ref"], record["metrics"], record["n"]) == (
        str(tmp_path / "a.npz"),
        str(tmp_path / "b.npz"),
        "spectrum",
        4,
    )
    assert "eval config:" not in err
    code, _, err = run_cli(args, capsys)
    assert code == 0
    assert "eval config: samples=" in err and "metrics=spectrum, n=4" in " ".join(err.split())
