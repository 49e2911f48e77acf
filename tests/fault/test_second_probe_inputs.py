"""The input half of the second adversarial probe (issue #28, bugs 3, 5, 6, 7, 8, 9, 11): every
number a command takes is checked against its range before anything is written (one line, exit 2),
recipes are typed exactly, an extreme aspect ratio cannot make the resize allocate gigabytes, a
read-only store is one line with the store's exit code, and help text keeps its brackets.

The absurd values are fixed here (-1, 2**70, nan, inf), not read from lplkit's range table, and the
numeric flags are enumerated from the CLI itself: a new numeric flag without a range fails.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_cli, subprocess_env
from PIL import Image

from lplkit.cli.app import COMMAND_MODULES
from lplkit.store.synthetic import write_synthetic_store

BIG = str(2**70)
EXIT_USAGE, EXIT_STORE = 2, 4


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "s.zarr"
    write_synthetic_store(path, count=16, shard_size=8, chunk_size=4, num_classes=3)
    return path


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _refused(args: list[str], capsys, *names: str) -> str:
    """`lplkit ARGS` exits 2 with one line naming each of `names`; returns the line."""
    code, _, err = run_cli(args, capsys)
    line = _one_line(err)
    assert code == EXIT_USAGE, err
    assert "internal error" not in line
    for name in names:
        assert name in line, line
    return line


def _train(store: Path, run: Path, *extra: str, steps: bool = True) -> list[str]:
    return ["train", "--store", str(store), "--out", str(run), "--model", "DiT-T/2",
            *(["--steps", "1"] if steps else []), "--batch-size", "4", "--log-every", "1",
            "--device", "cpu", *extra]  # fmt: skip


# --------------------------------------------------- bug 7: every numeric flag of every command

# Required arguments of each command (never reached: the bad number is refused while parsing).
_REQUIRED = {
    "encode": ["--dataset", "x", "--res", "16", "--out", "never-written"],
    "eval": ["--samples", "x", "--ref", "y"],
    "stats": ["never-opened.zarr"],
    "sample": ["--run", "never-read"],
    "export": ["--run", "never-read", "--out", "never-written"],
    "info": ["never-opened.zarr"],
    "verify": ["never-opened.zarr"],
    "upgrade": ["never-opened.zarr"],
    "demo": ["--out", "a-file"],  # were the number accepted, the demo would stop at once here
}


def _numeric_flags() -> list[tuple[str, str, str]]:
    """(command, flag, "int" | "float") of every numeric option of every command."""
    from typer.main import get_command

    from lplkit.cli.app import app

    group = get_command(app)
    out = []
    for name in COMMAND_MODULES:
        cmd = group.get_command(group.make_context("lplkit", [name]), name)  # type: ignore[attr-defined]
        for p in cmd.params:
            kind = _value_type(p)
            if kind in (int, float) and p.opts and p.opts[0].startswith("--"):
                out.append((name, p.opts[0], kind.__name__))
    return out


def _value_type(param) -> type | None:
    """int / float / ... of a parsed CLI parameter (typer's own type record, or click's)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:  # typer on click: the click type's name
        return {"integer": int, "float": float}.get(getattr(param.type, "name", ""))
    tp = descriptor.annotation
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else tp


NUMERIC_FLAGS = _numeric_flags()


def test_the_cli_surface_has_numeric_flags_everywhere_they_are_expected():
    commands = {c for c, _, _ in NUMERIC_FLAGS}
    assert {"encode", "eval", "stats", "train", "sample", "export", "demo"} <= commands
    assert len(NUMERIC_FLAGS) > 40  # train alone has ~20


@pytest.mark.parametrize(("command", "flag", "kind"), NUMERIC_FLAGS)
def test_absurd_numbers_are_one_line_exit_2_naming_the_flag(command, flag, kind, tmp_path, capsys):
    os.chdir(tmp_path)  # any stray write would land here
    (tmp_path / "a-file").write_text("")
    values = ["-1", BIG, "-" + BIG] if kind == "int" else ["-1", "nan", "inf", "-inf"]
    for value in values:
        line = _refused([command, *_REQUIRED.get(command, []), flag, value], capsys, flag)
        assert "must be" in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def _numeric_fields(cls: type, prefix: str = "") -> list[tuple[type, str]]:
    """(dataclass, dotted key) of every int/float field (also `X | None`, tuples of them) below
    `cls`, descending into sub-configs."""
    import dataclasses

    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        sub = [a for a in args if dataclasses.is_dataclass(a)]
        if sub:
            out += [(cls, prefix + f.name + "." + k) for _, k in _numeric_fields(sub[0])]
            continue
        leaves = [typing.get_args(a)[0] if typing.get_origin(a) is tuple else a for a in args]
        if any(leaf in (int, float) for leaf in leaves):
            out.append((cls, prefix + f.name))
    return out


def test_every_numeric_config_field_declares_a_range():
    from lplkit.config import field_range
    from lplkit.lpl.config import LPLConfig
    from lplkit.train.config import TrainConfig

    fields = _numeric_fields(TrainConfig) + _numeric_fields(LPLConfig)
    assert len(fields) > 30
    missing = [key for cls, key in fields if field_range(cls, key) is None]
    assert not missing, missing


def test_named_reproductions_of_the_probe(store, tmp_path, capsys):
    run = tmp_path / "run"
    _refused(["sample", "--run", str(run), "--n", "0"], capsys, "--n", "[1,")
    _refused(["sample", "--run", str(run), "--n", "-3"], capsys, "--n")
    _refused(["sample", "--run", str(run), "--seed", BIG], capsys, "--seed")
    _refused(["sample", "--run", str(run), "--labels", "1,-5"], capsys, "--labels")
    _refused(["stats", str(store), "--bins", "0"], capsys, "--bins")
    _refused(_train(store, run, "--warmup", "-5"), capsys, "--warmup", "[0,")
    _refused(_train(store, run, "--set", "optim.schedule=cosine", "--set",
                    "optim.decay_steps=-10"), capsys, "optim.decay_steps")  # fmt: skip
    _refused(_train(store, run, "--set", "objective.num_train_timesteps=0"), capsys,
             "objective.num_train_timesteps")  # fmt: skip
    assert not run.exists()
    out = tmp_path / "big.zarr"
    _refused(["encode", "--dataset", str(tmp_path), "--res", "100000", "--out", str(out)], capsys,
             "--res", "8192")  # fmt: skip
    assert not out.exists()


def test_labels_outside_the_runs_classes_are_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "samples"  # the bundled base has 8 classes (its run.json)
    line = _refused(["sample", "--run", "openmoji-base", "--labels", "99,1", "--out", str(out),
                     "--device", "cpu"], capsys, "--labels", "99", "8 classes")  # fmt: skip
    assert "0..7" in line
    assert not out.exists()


# ------------------------------------------------------------------------------ bug 5: --cfg nan


@pytest.mark.parametrize("value", ["nan", "inf", "-2"])
def test_sample_cfg_nan_is_refused(value, tmp_path, capsys):
    _refused(["sample", "--run", str(tmp_path / "run"), "--cfg", value], capsys, "--cfg")


def test_sample_run_refuses_nan_cfg_in_the_library_too(tmp_path):
    from lplkit.diffusion.generate import sample_run
    from lplkit.errors import ConfigError

    with pytest.raises(ConfigError, match="guidance"):
        sample_run(tmp_path / "never-read", guidance=float("nan"))


# -------------------------------------------------------------------- bug 6: --seed out of range


@pytest.mark.parametrize("seed", ["-1", BIG])
def test_bad_seed_writes_nothing_and_the_corrected_command_runs(seed, store, tmp_path, capsys):
    run = tmp_path / "run"
    _refused(_train(store, run, "--seed", seed), capsys, "--seed", "2**63-1")
    assert not run.exists()  # no config.json / run.json / metrics.jsonl to refuse the fix
    _refused(_train(store, run, "--set", f"seed={seed}"), capsys, "seed")
    assert not run.exists()
    code, _, err = run_cli(_train(store, run, "--seed", "0"), capsys)
    assert code == 0, err


# ------------------------------------------------------------- bug 9: exact types in TOML / --set


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("steps = 1e308", "steps"),
        ("steps = 10.0", "steps"),
        ("steps = true", "steps"),
        ("seed = 1.5", "seed"),
        ("[optim]\nlr = true", "optim.lr"),
        ("[optim]\nwarmup_steps = 2.0", "optim.warmup_steps"),
        ("[lpl.loss]\ncrop = 4.0", "lpl.loss.crop"),
        ("[lpl.loss]\noutliers = [2.5]", "lpl.loss.outliers"),  # was layer 2
        ("[optim]\nlr = inf", "optim.lr"),
    ],
)
def test_toml_values_must_have_the_fields_type(line, key, tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(line + "\n")
    run = tmp_path / "run"
    missing = tmp_path / "missing.zarr"  # were the recipe accepted, the run would stop here
    line_out = _refused(_train(missing, run, "--config", str(recipe), steps=False), capsys, key)
    assert any(w in line_out for w in ("expected", "must be", "is not")), line_out
    assert not run.exists()


def test_set_strings_and_toml_numbers_of_the_right_type_still_work():
    from lplkit.config import load_config
    from lplkit.train.config import TrainConfig

    cfg = load_config(TrainConfig, overrides=["steps=10", "optim.lr=1e-3", "optim.warmup_steps=2"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.warmup_steps) == (10, 1e-3, 2)
    cfg = load_config(TrainConfig, base={"optim": {"lr": 1}})  # an int widens to a float field
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


# ---------------------------------------------------------- bug 3: resize work of extreme images


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_extreme_aspect_ratio_is_skipped_before_the_resize(tmp_path, monkeypatch):
    """A 100000 x 8 strip has 0.8 Mpx (under the bound) but would be resized to 200000 x 16 =
    3.2 Mpx at res 16: over a bound of 1 Mpx, so it is skipped with a reason before decoding, and
    a normal image next to it is cropped exactly as guided-diffusion's center_crop_arr."""
    from lplkit.data.folder import ImageFolderSource
    from lplkit.data.prepared import PreparedSource

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    resized: list[tuple[int, int]] = []
    original = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        resized.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    (root / "a_strip.png").write_bytes(_png(rng.integers(0, 256, (8, 100_000, 3), np.uint8)))
    normal = rng.integers(0, 256, (30, 40, 3), np.uint8)
    (root / "b_normal.png").write_bytes(_png(normal))
    prepared = PreparedSource(ImageFolderSource(root), 16)
    strip, ok = prepared[0], prepared[1]
    assert strip.row["status"] == "skipped" and strip.x is None, strip.row
    assert strip.row["reason"].startswith("resize too large"), strip.row["reason"]
    assert "200000x16" in strip.row["reason"]
    assert all(w * h <= 1_000_000 for w, h in resized), resized  # no big resize was started
    # the oracle: center_crop_arr from its definition (16 / 30 scale, BICUBIC, centered crop)
    img = Image.fromarray(normal)
    img = original(img, (round(40 * 16 / 30), 16), resample=Image.BICUBIC)
    want = np.asarray(img)[:, (img.size[0] - 16) // 2 :][:, :16]
    assert ok.row["status"] == "ok"
    np.testing.assert_array_equal(ok.x.permute(1, 2, 0).numpy(), want)


def test_the_probes_strip_is_refused_at_the_default_bound_without_decoding():
    from lplkit.data.transforms import check_resize_work
    from lplkit.errors import BadImageError

    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's default (~ 0.25 GiB of RGB)
    for size in ((500_000, 8), (8, 1_000_000)):
        with pytest.raises(BadImageError, match="resize too large"):
            check_resize_work(size, 256)
    check_resize_work((4000, 3000), 256)  # ordinary photos, panoramas pass
    check_resize_work((12000, 1000), 1024)


# ------------------------------------------------------------------ bug 8: read-only stores


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_upgrade_of_a_current_store_writes_nothing(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    write_synthetic_store(path, count=8, shard_size=4, chunk_size=4, num_classes=3)
    before = _tree(path)
    code, out, err = run_cli(["upgrade", str(path), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["changed"] is False
    assert _tree(path) == before


def _read_only_cli(store: Path, *args: str) -> subprocess.CompletedProcess:
    """`lplkit ARGS` in a subprocess that sees `store` through a read-only bind mount (a private
    mount namespace: `unshare -rm`); skipped where user namespaces are not available."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-rm", "true"], capture_output=True)
    if unshare is None or probe.returncode != 0:
        pytest.skip("unshare -rm (user + mount namespaces) is not available here")
    script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
    return subprocess.run(
        [unshare, "-rm", "sh", "-c", script, "sh", str(store), sys.executable, "-m", "lplkit",
         *args],
        capture_output=True, text=True, env=subprocess_env(COLUMNS="300"), timeout=300,
    )  # fmt: skip


def test_stats_on_a_read_only_store_is_one_line_with_the_store_exit_code(store):
    proc = _read_only_cli(store, "stats", str(store), "--latents-only", "--device", "cpu")
    line = _one_line(proc.stderr)
    assert proc.returncode == EXIT_STORE, proc.stderr
    assert "not writable" in line and str(store) in line and "internal error" not in line


def test_upgrade_on_a_read_only_store(tmp_path):
    current = tmp_path / "current.zarr"
    write_synthetic_store(current, count=8, shard_size=4, chunk_size=4, num_classes=3)
    proc = _read_only_cli(current, "upgrade", str(current))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stderr
    old = tmp_path / "old.zarr"  # layout 1: needs writing
    write_synthetic_store(old, count=8, shard_size=4, chunk_size=4, num_classes=3)
    meta = json.loads((old / "moments" / "zarr.json").read_text())
    del meta["dimension_names"]
    (old / "moments" / "zarr.json").write_text(json.dumps(meta))
    proc = _read_only_cli(old, "upgrade", str(old))
    line = _one_line(proc.stderr)
    assert proc.returncode == EXIT_STORE, proc.stderr
    assert re.search(r"cannot upgrade .*read-only file system", line, re.I), line


# ------------------------------------------------------------------- bug 11: brackets in --help


def _help_params() -> list[tuple[str, str]]:
    """(command, help text) of every option and argument whose help has square brackets."""
    from typer.main import get_command

    from lplkit.cli.app import app

    group = get_command(app)
    found = []
    for name in COMMAND_MODULES:
        cmd = group.get_command(group.make_context("lplkit", [name]), name)  # type: ignore[attr-defined]
        found += [(name, p.help) for p in cmd.params if "[" in (getattr(p, "help", None) or "")]
    return found


def test_bracketed_help_text_survives_rendering(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # nothing wraps
    params = [(name, text.replace("\\[", "[")) for name, text in _help_params()]
    assert any("lplkit[wandb]" in text for _, text in params)
    rendered: dict[str, str] = {}
    for name, text in params:
        if name not in rendered:
            code, out, err = run_cli([name, "--help"], capsys)
            assert code == 0, err
            rendered[name] = " ".join(out.replace("│", " ").split())
        for bracketed in re.findall(r"\S*\[[^\]]*\]\S*", text):
            assert bracketed in rendered[name], (name, bracketed)
    assert "pip install 'lplkit[wandb]'" in rendered["train"]
