"""`lplkit stats` on a tiny store: equals a direct two-pass computation, stored atomically, refuses
another autoencoder, and feeds the LPL's `dataset` norm."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.models import make_tiny_vae
from helpers.stores import STATS_STORE_N as N_POS
from helpers.stores import STATS_STORE_SKIPPED as SKIPPED
from helpers.stores import write_stats_store

SEED = 3


def _hand_features(vae: torch.nn.Module, z: torch.Tensor) -> list[torch.Tensor]:
    """The decoder's own modules, called one by one (the oracle for DecoderTaps)."""
    dec = vae.decoder
    h = dec.conv_in(vae.post_quant_conv(z))
    h = dec.mid_block(h, None)
    feats = [h]
    for block in dec.up_blocks:
        h = block(h, None)
        feats.append(h)
    return feats


def _oracle_latents(data: dict[str, np.ndarray], items: list[tuple[int, int]]) -> torch.Tensor:
    """z = mu + sigma * eps with the documented per-item noise rule."""
    zs = []
    for pos, flip in items:
        m = data["moments_flip" if flip else "moments"][pos]
        eps = np.random.default_rng([SEED, pos, flip]).standard_normal((4, 4, 4), dtype=np.float32)
        zs.append(m[0] + m[1] * eps)
    return torch.from_numpy(np.stack(zs))


def _two_pass(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.float64)
    mean = flat.mean(axis=1)
    std = np.sqrt(((flat - mean[:, None]) ** 2).mean(axis=1))
    return mean, std, flat


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_vae_dir):
    url = tmp_path_factory.mktemp("stats") / "latents.zarr"
    data = write_stats_store(url, tiny_vae_dir)
    return url, data


@pytest.fixture(scope="module")
def computed(store, tiny_vae_dir):
    from lplkit.stats.job import run_stats

    url, _ = store
    stats, meta = run_stats(str(url), samples=None, seed=SEED, batch_size=5, bins=2048, pilot=4)
    return stats, meta


def test_stats_equal_direct_two_pass(store, computed, tiny_vae_dir) -> None:
    _, data = store
    stats, meta = computed
    ok = [p for p in range(N_POS) if p not in SKIPPED]
    items = sorted((p, f) for p in ok for f in (0, 1))  # all ok positions, both flips
    assert [tuple(r) for r in stats.items.tolist()] == items
    z = _oracle_latents(data, items)
    mean, std, _ = _two_pass(z.numpy())
    np.testing.assert_allclose(stats.latent_mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(stats.latent_std.numpy(), std, rtol=1e-6)
    np.testing.assert_allclose(stats.latent_scale.numpy(), 1 / std, rtol=1e-6)
    pooled = z.numpy().astype(np.float64)
    assert stats.scaling_factor == pytest.approx(1 / pooled.std(), rel=1e-6)
    assert stats.shift_factor == pytest.approx(pooled.mean(), rel=1e-6, abs=1e-9)

    vae = make_tiny_vae(0)
    with torch.no_grad():
        feats = _hand_features(vae, z)
    assert [layer.name for layer in stats.layers] == [
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
        "up_blocks.2",
    ]
    for layer, f in zip(stats.layers, feats, strict=True):
        assert (layer.channels, layer.height, layer.width) == tuple(f.shape[1:])
        m, s, flat = _two_pass(f.numpy())
        np.testing.assert_allclose(layer.mean.numpy(), m, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.std.numpy(), s, rtol=1e-5)
        # Histogram quantiles vs exact ones: within the documented bound, one bin width plus the
        # gap between the order statistics around the quantile's rank (data sparser than a bin).
        ordered = np.sort(flat, axis=1)
        n = ordered.shape[1]
        for q, got in ((0.02, layer.q_low), (0.98, layer.q_high)):
            exact = np.quantile(flat, q, axis=1)
            k = int(np.floor(q * (n - 1)))
            gap = ordered[:, min(k + 2, n - 1)] - ordered[:, max(k - 1, 0)]
            bound = layer.q_error_bound.numpy() + gap + 1e-9
            np.testing.assert_array_less(np.abs(got.numpy() - exact), bound)
        lo, hi = np.quantile(flat, 0.02, axis=1), np.quantile(flat, 0.98, axis=1)
        outside = ((flat <= (lo - 2 * s)[:, None]) | (flat >= (hi + 2 * s)[:, None])).mean()
        assert layer.outlier_share == pytest.approx(outside, abs=0.01)
    assert meta["depth"] == 3 and meta["sampling"]["items"] == len(items)


def test_written_stats_load_back_with_provenance(store, computed) -> None:
    from lplkit.stats.storage import load_stats

    url, _ = store
    stats, meta = computed
    loaded = load_stats(str(url))
    assert loaded is not None
    assert torch.equal(loaded.latent_mean, stats.latent_mean)
    for a, b in zip(loaded.layers, stats.layers, strict=True):
        assert a.name == b.name and torch.equal(a.q_high, b.q_high) and torch.equal(a.std, b.std)
    assert np.array_equal(loaded.items, stats.items)
    m = loaded.meta
    assert (
        m["store"]["content_hash"] == meta["store"]["content_hash"]
        and len(m["store"]["content_hash"]) == 64
    )
    assert m["autoencoder"]["config_hash"] == make_tiny_vae_info_hash()
    assert m["sampling"]["seed"] == SEED and m["run"] == meta["run"]
    fs = loaded.feature_stats
    assert list(fs) == [layer.name for layer in stats.layers]
    assert fs["up_blocks.1"].q_low.dtype == torch.float32


def make_tiny_vae_info_hash() -> str:
    from lplkit.autoencoders.loading import config_hash

    return config_hash(make_tiny_vae(0))


def test_rerun_replaces_atomically_and_crash_keeps_old(tmp_path, tiny_vae_dir, monkeypatch) -> None:
    import zarr

    import lplkit.stats.storage as ss
    from lplkit.stats.job import run_stats

    url = tmp_path / "own.zarr"  # its own store: the module's store keeps its full-depth stats
    write_stats_store(url, tiny_vae_dir)
    assert ss.load_stats(str(url)) is None
    run_stats(str(url), samples=4, seed=10, batch_size=4, pilot=2, depth=0)
    _, first = run_stats(str(url), samples=6, seed=11, batch_size=4, pilot=2, depth=1)
    runs = list(zarr.open_group(str(url), mode="r")["stats"].group_keys())
    assert runs == [first["run"]]  # the earlier run is gone
    calls = {"n": 0}
    real = ss._array

    def crash_midway(group, name, values):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        real(group, name, values)

    monkeypatch.setattr(ss, "_array", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        run_stats(str(url), samples=6, seed=12, batch_size=4, pilot=2, depth=1)
    loaded = ss.load_stats(str(url), check_fresh=True)
    assert loaded is not None and loaded.meta["run"] == first["run"]
    assert loaded.meta["sampling"]["seed"] == 11 and len(loaded.layers) == 2
    # A store whose content changed after the stats: check_fresh refuses them.
    marker = url / "progress" / "shard-00001.json"
    doc = json.loads(marker.read_text())
    doc["checksums"]["moments"] = "0" * 64
    marker.write_text(json.dumps(doc))
    from lplkit.errors import StoreMismatchError

    with pytest.raises(StoreMismatchError, match="content hash changed"):
        ss.load_stats(str(url), check_fresh=True)
    assert ss.load_stats(str(url)) is not None


def test_refuses_another_autoencoder(store, other_vae_dir, tmp_path) -> None:
    from lplkit.errors import StoreMismatchError
    from lplkit.stats.job import run_stats

    url, _ = store
    with pytest.raises(StoreMismatchError, match="weights_hash"):  # same config, other weights
        run_stats(str(url), vae=str(other_vae_dir), samples=2, write=False)
    no_pqc = tmp_path / "no_pqc"
    make_tiny_vae(0, post_quant_conv=False).save_pretrained(no_pqc)
    with pytest.raises(StoreMismatchError, match="config_hash"):
        run_stats(str(url), vae=str(no_pqc), samples=2, write=False)


def test_dataset_norm_of_lpl_uses_stored_stats(store, computed) -> None:
    from lplkit.lpl.loss import LatentPerceptualLoss
    from lplkit.stats.storage import load_stats

    url, _ = store
    loaded = load_stats(str(url))
    assert loaded is not None
    vae = make_tiny_vae(0)
    lpl = LatentPerceptualLoss(
        vae, norm="dataset", feature_stats=loaded.feature_stats, outliers=False,
        layer_weights="uniform", distance="mse", depth=2,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 4, 4, generator=gen), torch.randn(3, 4, 4, 4, generator=gen)
    got = lpl(pred, target).detach()
    with torch.no_grad():
        fx, fy = (
            _hand_features(make_tiny_vae(0), pred)[:3],
            _hand_features(make_tiny_vae(0), target)[:3],
        )
    per_layer = []
    for i, (x, y) in enumerate(zip(fx, fy, strict=True)):
        mu = loaded.layers[i].mean.float().view(1, -1, 1, 1)
        sd = (loaded.layers[i].std.float().view(1, -1, 1, 1) ** 2 + 1e-6).sqrt()
        per_layer.append((((x - mu) / sd - (y - mu) / sd) ** 2).mean(dim=(1, 2, 3)))
    expected = torch.stack(per_layer).mean(dim=0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
