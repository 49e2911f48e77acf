"""`--lpl-norm dataset` in training: the trainer's LPL equals a direct `LatentPerceptualLoss` fed
the statistics read from the store with zarr, and every mismatch of those statistics is refused in
one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_cli

STAT_FIELDS = ("mean", "std", "q_low", "q_high")


def _store(root: Path, vae_dir: Path, **stats_kwargs) -> Path:
    """A synthetic store 'encoded with' the tiny VAE; `stats_kwargs` (None = no stats) for run_stats."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.stats.job import run_stats
    from lplkit.store.synthetic import write_synthetic_store

    path = root / "s.zarr"
    info = autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir))
    write_synthetic_store(path, count=16, latent_shape=(4, 8, 8), num_classes=2, autoencoder=info)
    if stats_kwargs.get("stats", True):
        run_stats(str(path), samples=8, batch_size=4, pilot=2, **stats_kwargs)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_vae_dir) -> Path:
    return _store(tmp_path_factory.mktemp("full"), tiny_vae_dir)


@pytest.fixture(scope="module")
def shallow_store(tmp_path_factory, tiny_vae_dir) -> Path:
    """Statistics to depth 0 only, computed without post_quant_conv."""
    return _store(
        tmp_path_factory.mktemp("shallow"), tiny_vae_dir, depth=0, apply_post_quant_conv=False
    )


def _zarr_feature_stats(store: Path) -> dict:
    """{layer index: FeatureStats} read with zarr directly (not through lplkit.stats.storage)."""
    import zarr

    from lplkit.lpl.decoder_taps import FeatureStats

    group = zarr.open_group(str(store), mode="r")["stats"]
    layers = group[group.attrs["lplkit_stats"]["current"]]["layers"]
    return {
        int(k): FeatureStats(
            *(torch.from_numpy(np.asarray(layers[k][f][...])).float() for f in STAT_FIELDS)
        )
        for k in layers.group_keys()
    }


def _args(store: Path, out: Path, *extra: str) -> list[str]:
    return ["--store", str(store), "--out", str(out), "--model", "DiT-T/2", "--batch-size", "4",
            "--steps", "2", "--device", "cpu", "--lpl", "--lpl-snr-min", "0", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "preset_args", [["--lpl-norm", "dataset"], ["--lpl-preset", "paper-dataset"]]
)
def test_trainer_lpl_equals_direct_call_with_store_stats(
    store, tiny_vae_dir, tmp_path, preset_args
):
    from lplkit.autoencoders.loading import load_autoencoder
    from lplkit.cli.train import resolve_argv
    from lplkit.lpl.loss import LatentPerceptualLoss
    from lplkit.train.builders import build_components
    from lplkit.train.losses import denoise, micro_batch_loss

    cfg = resolve_argv(_args(store, tmp_path / "r", *preset_args))
    c = build_components(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 4, 8, 8, generator=g)
    eps = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0.1, 0.25, 0.3])
    labels = torch.tensor([0, 1, 0])
    gate = torch.ones(3, dtype=torch.bool)
    parts = micro_batch_loss(c.model, c.objective, z0, labels, eps, t,
                             normalizer=c.normalizer, lpl=c.lpl, gate=gate)  # fmt: skip

    with torch.no_grad():
        s = c.objective.compute(z0, eps, t)
        z0_hat = c.objective.predict_z0(s.z_t, t, denoise(c.model, s.z_t, s.model_t, labels))
    opts = {"norm": "dataset"}
    if preset_args[-1] == "paper-dataset":
        opts["outlier_source"] = "dataset"
    direct = LatentPerceptualLoss(
        load_autoencoder(str(tiny_vae_dir)),
        "paper",
        feature_stats=_zarr_feature_stats(store),
        **opts,
    )
    want = direct(c.normalizer.unnormalize(z0_hat), c.normalizer.unnormalize(z0))
    torch.testing.assert_close(parts.lpl, want, rtol=1e-5, atol=1e-7)
    # the statistics matter: the per-sample-standardized `paper` value is a different number
    paper = LatentPerceptualLoss(load_autoencoder(str(tiny_vae_dir)), "paper")
    assert not torch.allclose(
        paper(c.normalizer.unnormalize(z0_hat), c.normalizer.unnormalize(z0)), want, rtol=1e-3
    )


def test_stats_then_train_with_dataset_norm(tiny_vae_dir, tmp_path, capsys):
    """The documented sequence: `lplkit stats STORE`, then `lplkit train ... --lpl-norm dataset`."""
    store = _store(tmp_path, tiny_vae_dir, stats=False)
    assert run_cli(["stats", str(store), "--samples", "8", "--batch-size", "4"], capsys)[0] == 0
    run = tmp_path / "run"
    code, _, err = run_cli(["train", *_args(store, run, "--lpl-norm", "dataset")], capsys)
    assert code == 0, err
    assert "norm=dataset" in err  # the resolved options shown at start
    loss = json.loads((run / "config.json").read_text())["lpl"]["loss"]
    assert loss["norm"] == "dataset" and loss["outlier_source"] == "sample"
    assert loss["apply_post_quant_conv"] is True and loss["depth"] is None


def _refused(args: list[str], capsys, match: str, warning: str | None = None) -> str:
    """One `error:` line matching `match`; besides it only the LPL summary and, when `warning` is
    given, exactly one `warning:` line containing it (the CLI prints warnings as one line each)."""
    code, _, err = run_cli(["train", *args], capsys)
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith("LPL:")]
    warnings = [x for x in lines if x.startswith("warning:")]
    lines = [x for x in lines if not x.startswith("warning:")]
    assert code != 0 and len(lines) == 1, err
    assert match in lines[0], lines[0]
    if warning is None:
        assert not warnings, err
    else:
        assert len(warnings) == 1 and warning in warnings[0], err
    return lines[0]


def test_refuses_missing_stats(tiny_vae_dir, tmp_path, capsys):
    store = _store(tmp_path, tiny_vae_dir, stats=False)
    _refused(_args(store, tmp_path / "r", "--lpl-norm", "dataset"), capsys, "lplkit stats")
    _refused(_args(store, tmp_path / "r", "--set", "lpl.loss.outlier_source=dataset"), capsys,
             "has no statistics")  # fmt: skip


def test_refuses_smaller_depth_and_other_post_quant_conv(shallow_store, tmp_path, capsys):
    out = tmp_path / "r"
    _refused(_args(shallow_store, out, "--lpl-norm", "dataset"), capsys, "cover decoder depth 0")
    _refused(_args(shallow_store, out, "--lpl-norm", "dataset", "--lpl-depth", "0"), capsys,
             "computed without post_quant_conv")  # fmt: skip
    # the matching loss (depth 0, no post_quant_conv) trains
    ok = [
        "--lpl-norm",
        "dataset",
        "--lpl-depth",
        "0",
        "--set",
        "lpl.loss.apply_post_quant_conv=false",
    ]
    assert run_cli(["train", *_args(shallow_store, out, *ok)], capsys)[0] == 0


def test_refuses_post_quant_conv_mismatch_the_other_way(store, tmp_path, capsys):
    args = _args(
        store, tmp_path / "r", "--lpl-preset", "diffusers-reference", "--lpl-norm", "dataset"
    )
    _refused(args, capsys, "--no-post-quant-conv")


@pytest.mark.filterwarnings("default::UserWarning")  # the explicit --vae notice, printed by the CLI
def test_refuses_stats_of_another_autoencoder(store, other_vae_dir, tmp_path, capsys):
    args = _args(store, tmp_path / "r", "--lpl-norm", "dataset", "--vae", str(other_vae_dir))
    _refused(args, capsys, "weights_hash", warning="given explicitly")


def test_stats_computed_mid_run_do_not_change_a_resumed_runs_normalization(tiny_vae_dir, tmp_path):
    """`lplkit stats` between two legs of a run (e.g. before a dataset-norm LPL fork) must not move
    the run's latent space: the resumed run equals one trained straight through without stats."""
    from safetensors.torch import load_file

    store = _store(tmp_path, tiny_vae_dir, stats=False)
    base = ["--model", "DiT-T/2", "--batch-size", "4", "--device", "cpu", "--ckpt-every", "2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert (
        run_cli(["train", "--store", str(store), "--out", str(straight), *base, "--steps", "4"])[0]
        == 0
    )
    assert (
        run_cli(["train", "--store", str(store), "--out", str(split), *base, "--steps", "2"])[0]
        == 0
    )
    before = json.loads((split / "run.json").read_text())["normalization"]
    assert before["source"] == "autoencoder"
    assert run_cli(["stats", str(store), "--samples", "8", "--batch-size", "4"])[0] == 0
    assert (
        run_cli(["train", "--store", str(store), "--out", str(split), *base, "--steps", "4"])[0]
        == 0
    )
    assert json.loads((split / "run.json").read_text())["normalization"] == before
    ckpt = "checkpoints/step_00000004/model.safetensors"
    a, b = load_file(straight / ckpt), load_file(split / ckpt)
    assert all(torch.equal(a[k], b[k]) for k in a)
