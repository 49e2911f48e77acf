"""Every LPL option from a TOML recipe, `--set` and the flags reaches the `LatentPerceptualLoss` the
trainer builds; presets resolve first, explicit options override; old run layouts still load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from lplkit.cli.train import resolve_argv
from lplkit.config import to_dict
from lplkit.errors import ConfigError
from lplkit.lpl.config import LPLConfig, resolve_lpl_config
from lplkit.train.config import TrainConfig
from lplkit.train.run_dir import check_resume_config
from lplkit.train.run_dir import resolve_train_config as resolve_config

# field -> (TOML literal, --set string, the value the loss must end up with); none is the
# `paper` preset's value, so an option that is dropped on the way shows as a mismatch.
CASES = {
    "depth": ("1", "1", 1),
    "norm": ('"l2"', "l2", "l2"),
    "standardize_stats": ('"target"', "target", "target"),
    "outliers": ("[2]", "2", (2,)),
    "outlier_source": ('"dataset"', "dataset", "dataset"),
    "outlier_quantile": ("0.05", "0.05", 0.05),
    "outlier_std_mult": ("3.0", "3", 3.0),
    "layer_weights": ('"pow2"', "pow2", "pow2"),
    "distance": ('"l1"', "l1", "l1"),
    "apply_post_quant_conv": ("false", "false", False),
    "grad_checkpointing": ("true", "true", True),
    "eps": ("1e-4", "1e-4", 1e-4),
    "crop": ("4", "4", 4),
    "crop_mode": ('"grid"', "grid", "grid"),
    "compile": ("true", "true", True),
    "channels_last": ("true", "true", True),
}
EXTRA = {  # more spellings of the same options
    "outliers-table": ("outliers", '{"2" = 2, "3" = 1}', "2:2,3:1", {2: 2, 3: 1}),
    "outliers-off": ("outliers", "false", "false", False),
    "norm-dataset": ("norm", '"dataset"', "dataset", "dataset"),
}


def test_cases_cover_every_lplconfig_field():
    assert set(CASES) == {f.name for f in dataclasses.fields(LPLConfig)}
    paper = resolve_lpl_config("paper")
    assert all(getattr(paper, k) != v for k, (_, _, v) in CASES.items())


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_vae_info) -> Path:
    """A synthetic store encoded 'with' the tiny VAE, with `lplkit stats` run on it."""
    from lplkit.stats.job import run_stats
    from lplkit.store.synthetic import write_synthetic_store

    path = tmp_path_factory.mktemp("store") / "s.zarr"
    write_synthetic_store(
        path, count=16, latent_shape=(4, 8, 8), num_classes=2, autoencoder=tiny_vae_info
    )
    run_stats(str(path), samples=8, batch_size=4, pilot=2)
    return path


def _built_loss(cfg: TrainConfig):
    """The LPL module `build_components` makes for the trainer."""
    from lplkit.train.builders import build_components

    parts = build_components(cfg, torch.device("cpu"))
    return parts.lpl_module


def _base(store: Path, tmp_path: Path) -> dict:
    return {"store": str(store), "out": str(tmp_path / "run"), "lpl": True, "model": "DiT-T/2"}


@pytest.mark.parametrize(
    "field,toml,text,expected",
    [(k, *v) for k, v in CASES.items()] + [v for v in EXTRA.values()],
    ids=[*CASES, *EXTRA],
)
def test_option_from_toml_and_set_reaches_the_loss(store, tmp_path, field, toml, text, expected):
    want = resolve_lpl_config("paper", **{field: expected})
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[lpl]\npreset = "paper"\n[lpl.loss]\n{field} = {toml}\n')
    from_toml = resolve_config(str(recipe), [], _base(store, tmp_path))
    from_set = resolve_config(None, [f"lpl.loss.{field}={text}"], _base(store, tmp_path))
    for cfg in (from_toml, from_set):
        assert cfg.lpl.loss == want
        assert _built_loss(cfg).config == want


def test_flags_reach_the_loss(store, tmp_path):
    args = ["--store", str(store), "--out", str(tmp_path / "r"), "--lpl", "--model", "DiT-T/2"]
    cfg = resolve_argv([*args, "--lpl-norm", "l2", "--lpl-depth", "2",
                        "--lpl-layer-weights", "uniform", "--lpl-outliers", "2"])  # fmt: skip
    want = resolve_lpl_config("paper", norm="l2", depth=2, layer_weights="uniform", outliers=(2,))
    assert cfg.lpl.loss == want and _built_loss(cfg).config == want


def test_preset_first_then_explicit_options(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[lpl]\npreset = "paper"\n[lpl.loss]\ndistance = "l1"\n')
    cfg = resolve_argv(["--config", str(recipe), "--lpl-preset", "diffusers-reference",
                        "--set", "lpl.loss.norm=l2", "--lpl-depth", "1"])  # fmt: skip
    ref = resolve_lpl_config("diffusers-reference")
    assert cfg.lpl.preset == "diffusers-reference"
    assert cfg.lpl.loss == dataclasses.replace(ref, distance="l1", norm="l2", depth=1)
    # a flag beats --set beats the file
    cfg = resolve_argv(["--config", str(recipe), "--set", "lpl.loss.distance=mse",
                        "--set", "lpl.loss.norm=l2", "--lpl-norm", "none"])  # fmt: skip
    assert cfg.lpl.loss.distance == "mse" and cfg.lpl.loss.norm == "none"


def test_bad_and_unknown_loss_options_are_errors():
    with pytest.raises(ConfigError, match=r"lpl\.loss\.nrom"):
        resolve_config(None, ["lpl.loss.nrom=l2"], {})
    with pytest.raises(ConfigError, match="norm"):
        resolve_config(None, ["lpl.loss.norm=batch"], {})
    with pytest.raises(ConfigError, match=r"lpl\.loss\.outliers"):
        resolve_config(None, ["lpl.loss.outliers=deep"], {})
    with pytest.raises(ConfigError, match=r"lpl\.loss\.depth"):
        resolve_config(None, ["lpl.loss.depth=two"], {})
    # the pre-[lpl.loss] key is gone: an unknown key naming the valid ones, not a silent alias
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) lpl\.depth"):
        resolve_config(None, ["lpl.depth=1"], {})


def test_resolved_options_are_in_the_dumped_config():
    cfg = resolve_config(None, [], {"lpl_preset": "diffusers-reference", "lpl_norm": "l2"})
    dumped = to_dict(cfg)["lpl"]["loss"]
    want = dataclasses.replace(resolve_lpl_config("diffusers-reference"), norm="l2")
    assert dumped == json.loads(json.dumps(want.to_dict()))
    assert set(dumped) == {f.name for f in dataclasses.fields(LPLConfig)}


def test_compile_and_crop_flags_reach_the_loss_and_resume_rules(store, tmp_path):
    args = ["--store", str(store), "--out", str(tmp_path / "r"), "--lpl", "--model", "DiT-T/2"]
    cfg = resolve_argv([*args, "--lpl-compile", "--lpl-crop", "4"])
    want = resolve_lpl_config("paper", compile=True, crop=4)
    assert cfg.lpl.loss == want and _built_loss(cfg).config == want
    assert resolve_argv([*args, "--no-lpl-compile"]).lpl.loss.compile is False
    # compile / channels_last change how the same math runs: a resumed run may switch them;
    # the crop changes the loss: refused
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    assert check_resume_config(run, resolve_argv([*args, "--lpl-crop", "4"]))
    switched = resolve_argv([*args, "--lpl-crop", "4", "--set", "lpl.loss.channels_last=true"])
    assert check_resume_config(run, switched)
    with pytest.raises(ConfigError, match=r"lpl\.loss\.crop"):
        check_resume_config(run, resolve_argv([*args, "--lpl-compile", "--lpl-crop", "2"]))
