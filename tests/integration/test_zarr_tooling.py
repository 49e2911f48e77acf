"""A store opens cleanly in zarr-python, xarray and dask (no warning, dimension names) and they read
the numbers LatentStore.read returns; a layout-1 store still opens in lplkit and `lplkit upgrade`
brings it to layout 2 without touching the data."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_cli

from lplkit.store import LatentStore
from lplkit.store.synthetic import write_synthetic_store

N, SHAPE = 40, (4, 4, 4)
DIMS = ["sample", "moment", "channel", "y", "x"]


def _store(path: Path) -> Path:
    write_synthetic_store(path, count=N, latent_shape=SHAPE, flips=True, shard_size=16,
                          chunk_size=8, skipped=[3])  # fmt: skip
    code, _, err = run_cli(
        ["stats", str(path), "--samples", "0", "--latents-only", "--device", "cpu"]
    )
    assert code == 0, err
    return path


def _open_everything(path: Path) -> dict:
    """Open and list the store with each tool, every warning an error; returns what they read."""
    import dask.array as da
    import xarray as xr
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(str(path), mode="r")
        names = sorted(group.keys())
        deep = sorted(p for p, _ in group.members(max_depth=None))
        group.tree()
        ds = xr.open_zarr(str(path))  # dask-backed variables
        out = {
            "names": names,
            "deep": deep,
            "dims": {k: list(v.dims) for k, v in ds.data_vars.items()},
        }
        out["xr_moments"] = ds["moments"].values
        out["xr_flip"] = ds["moments_flip"].values
        out["xr_labels"] = ds["labels"].values
        out["dask_moments"] = da.from_zarr(str(path), component="moments").compute()
        stats = [p for p in deep if p.startswith("stats/run-") and p.count("/") == 1]
        out["xr_stats"] = xr.open_zarr(str(path), group=stats[0])["latent_mean"].values
    return out


def test_zarr_xarray_dask_open_a_store_cleanly_and_read_the_same_numbers(tmp_path):
    path = _store(tmp_path / "s.zarr")
    got = _open_everything(path)
    assert got["names"] == ["labels", "moments", "moments_flip", "stats"]
    assert got["dims"] == {"moments": DIMS, "moments_flip": DIMS, "labels": ["sample"]}

    store = LatentStore.open(str(path))
    everything = np.arange(N)
    for name, flip in (("xr_moments", False), ("xr_flip", True)):
        mean, std = store.read(everything, flip=flip)
        np.testing.assert_array_equal(got[name][:, 0].astype(np.float32), mean)
        np.testing.assert_array_equal(got[name][:, 1].astype(np.float32), std)
    np.testing.assert_array_equal(got["dask_moments"], got["xr_moments"])
    np.testing.assert_array_equal(got["xr_labels"], store.labels)
    from lplkit.stats.storage import load_stats

    np.testing.assert_array_equal(got["xr_stats"], load_stats(store).latent_mean.numpy())


def _make_layout_1(path: Path) -> None:
    """What a store written before layout 2 looks like: no dimension_names, no consolidated
    metadata, no layout_version in the manifest."""
    for meta_path in path.rglob("zarr.json"):
        meta = json.loads(meta_path.read_text())
        meta.pop("dimension_names", None)
        meta.pop("consolidated_metadata", None)
        if meta_path.parent == path:
            meta["attributes"]["lplkit"].pop("layout_version")
            meta["attributes"]["lplkit"].pop("geometry")
        meta_path.write_text(json.dumps(meta))


def _data_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "zarr.json"):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


def test_layout_1_store_opens_in_lplkit_and_upgrades(tmp_path, capsys):
    import xarray as xr

    path = _store(tmp_path / "old.zarr")
    want = _open_everything(path)
    _make_layout_1(path)
    digest = _data_digest(path / "stats")

    store = LatentStore.open(str(path))  # lplkit reads the old layout as before
    assert len(list(store.batches(8, seed=0))) == 39 // 8
    with pytest.raises(KeyError, match="dimension_names"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # and one warning per sidecar: what layout 2 fixes
        xr.open_zarr(str(path), consolidated=False)
    code, out, _ = run_cli(["info", str(path), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["layout_version"] == 1
    assert info["upgrade"] == f"lplkit upgrade {path}"

    code, out, err = run_cli(["upgrade", str(path), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["layout_version_before"] == 1 and result["layout_version"] == 3
    # the store's arrays are copied into byte-sized shards (named as they are written); the
    # statistics arrays only get their names (metadata only)
    assert result["resharded"]["shard_size"] == [16, N]
    assert result["named_arrays"] and all(p.startswith("stats/") for p in result["named_arrays"])
    assert _data_digest(path / "stats") == digest

    got = _open_everything(path)
    for key in ("names", "deep", "dims"):
        assert got[key] == want[key]
    for key in ("xr_moments", "xr_flip", "xr_labels", "dask_moments", "xr_stats"):
        np.testing.assert_array_equal(got[key], want[key])
    again = json.loads(run_cli(["upgrade", str(path), "--json"], capsys)[1])
    assert again["named_arrays"] == [] and again["layout_version_before"] == 3
    assert again["changed"] is False
