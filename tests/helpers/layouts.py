"""Byte-sized (layout 3) and row-sized (layout 2) test stores of the same rows, and what they hold
read three ways (zarr directly, lplkit's row reads, lplkit's chunk reads)."""

from __future__ import annotations

import numpy as np

SHAPE = (4, 8, 8)
N = 97
SKIPPED = (5, 40, 96)
# 4x8x8 fp16 with flips: 2*256*2 B a moments row, 2052 B a row with the flip copy and the label.
# 5 KiB chunks = 5 rows; 0.03 MiB = 31457 B -> 15 rows = 3 chunks a shard; 97 rows = 7 shards, the
# last one (90..96) a partial shard ending in a partial chunk.
BYTES_GEOMETRY = {"shard_mb": 0.03, "chunk_bytes": 5 * 1024}


def write_test_store(url, **geometry):
    """The test rows (N, flips, SKIPPED skipped, captions) in the store geometry `geometry`;
    returns the float32 arrays written."""
    from lplkit.store.synthetic import write_synthetic_store

    return write_synthetic_store(
        url,
        count=N,
        latent_shape=SHAPE,
        flips=True,
        skipped=SKIPPED,
        captions=True,
        seed=3,
        **geometry,
    )


def as_layout_2(url) -> None:
    """The manifest the writer wrote before layout 3: row-sized shards, no `geometry`."""
    import zarr

    from lplkit.store import format as fmt

    group = zarr.open_group(str(url), mode="r+", use_consolidated=False)
    m = dict(group.attrs[fmt.MANIFEST_KEY])
    del m["geometry"]
    m["layout_version"] = 2
    group.attrs[fmt.MANIFEST_KEY] = m


def raw_arrays(url) -> dict[str, np.ndarray]:
    """The stored bytes of every array, through zarr (not lplkit's readers)."""
    import zarr

    from lplkit.store import format as fmt

    group = zarr.open_group(str(url), mode="r", use_consolidated=False)
    return {name: np.asarray(group[name][:]) for name in fmt.array_names({"flips": True})}


def read_all(url) -> dict[str, object]:
    """Everything lplkit's reader serves: moments/flips one row at a time (raw local rows) and all
    at once (chunks), labels, keys, captions, statuses."""
    from lplkit.store import LatentStore

    store = LatentStore.open(str(url))
    pos = np.arange(len(store))
    out: dict[str, object] = {}
    for flip in (False, True):
        whole = np.concatenate(store.read(pos, flip=flip), axis=1)
        single = np.concatenate(
            [np.concatenate(store.read([p], flip=flip), axis=1) for p in pos.tolist()]
        )
        np.testing.assert_array_equal(single, whole)
        out[f"flip={flip}"] = whole
    rows = store.rows(pos)
    for col in ("key", "caption", "label", "status"):
        out[col] = rows.column(col).to_pylist()
    return out


def oracle(written: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What an fp16 store must hold, computed with numpy: float32 -> float16, skipped rows zero."""
    return {
        "moments": written["moments"].astype(np.float16),
        "moments_flip": written["moments_flip"].astype(np.float16),
        "labels": written["labels"],
    }


def assert_same_reads(a: dict[str, object], b: dict[str, object]) -> None:
    """`read_all` results equal: moments bitwise, index columns exactly."""
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("flip="):
            assert a[key].tobytes() == b[key].tobytes(), key  # type: ignore[attr-defined]
        else:
            assert a[key] == b[key], key


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].tobytes() == b[name].tobytes(), name  # bitwise
