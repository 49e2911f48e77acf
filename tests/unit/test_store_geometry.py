"""Layout 3: shards sized in bytes (`format.store_geometry`), `lplkit upgrade` of row-sized (layout 2)
stores, and the streaming synthetic writer (issue #27 item 2)."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest
import zarr
from conftest import run_cli

import lplkit.store.reshard as reshard
from lplkit.errors import StoreError
from lplkit.store import LatentStore
from lplkit.store import format as fmt
from lplkit.store.synthetic import shard_moments, stream_synthetic_store, write_synthetic_store
from lplkit.store.verify import verify_store

SHAPE = (4, 8, 8)
N = 97
SKIPPED = (5, 40, 96)
# 4x8x8 fp16 with flips: 2*256*2 B a moments row, 2052 B a row with the flip copy and the label.
# 5 KiB chunks = 5 rows; 0.03 MiB = 31457 B -> 15 rows = 3 chunks a shard; 97 rows = 7 shards, the
# last one (90..96) a partial shard ending in a partial chunk.
BYTES_GEOMETRY = {"shard_mb": 0.03, "chunk_bytes": 5 * 1024}


def _write(url, **geometry):
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


def _as_layout_2(url) -> None:
    """The manifest the writer wrote before layout 3: row-sized shards, no `geometry`."""
    group = zarr.open_group(str(url), mode="r+", use_consolidated=False)
    m = dict(group.attrs[fmt.MANIFEST_KEY])
    del m["geometry"]
    m["layout_version"] = 2
    group.attrs[fmt.MANIFEST_KEY] = m


def _raw(url) -> dict[str, np.ndarray]:
    """The stored bytes of every array, through zarr (not lplkit's readers)."""
    group = zarr.open_group(str(url), mode="r", use_consolidated=False)
    return {name: np.asarray(group[name][:]) for name in fmt.array_names({"flips": True})}


def _read_all(url) -> dict[str, object]:
    """Everything lplkit's reader serves: moments/flips one row at a time (raw local rows) and all
    at once (chunks), labels, keys, captions, statuses."""
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


def _oracle(written: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What an fp16 store must hold, computed with numpy: float32 -> float16, skipped rows zero."""
    return {
        fmt.MOMENTS: written["moments"].astype(np.float16),
        fmt.MOMENTS_FLIP: written["moments_flip"].astype(np.float16),
        fmt.LABELS: written["labels"],
    }


def _assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].tobytes() == b[name].tobytes(), name  # bitwise


# -- geometry --------------------------------------------------------------------------------------


def test_geometry_in_bytes_by_hand():
    # 4x8x8 fp16, no flips: moments row 1024 B, row 1028 B; chunk 64 rows (1 MiB would be 1024);
    # 128 MiB // 1028 = 130561 rows -> 2040 whole chunks = 130560 rows
    g = fmt.store_geometry((4, 8, 8), "float16", False, 4_000_000)
    assert (g["shard_size"], g["chunk_size"]) == (130560, 64)
    assert g["geometry"] == {"rule": "bytes", "shard_mb": 128.0, "chunk_bytes": 1 << 20,
                             "row_bytes": 1028}  # fmt: skip
    # ImageNet 512 px with flips: 4x64x64 fp16, moments row 65536 B, row 131076 B; chunk 16 rows;
    # 134217728 // 131076 = 1023 rows -> 63 chunks = 1008 rows
    g = fmt.store_geometry((4, 64, 64), "float16", True, 1_281_167)
    assert (g["shard_size"], g["chunk_size"]) == (1008, 16)
    # bfloat16 is stored as uint16: the same bytes as float16; float32 twice
    assert fmt.row_bytes((4, 32, 32), "bfloat16", False) == 2 * 4096 * 2 + 4
    assert fmt.row_bytes((4, 32, 32), "float32", True) == 2 * (2 * 4096 * 4) + 4
    # a small store: one shard of the chunks covering it; smaller than a chunk: one chunk of its rows
    g = fmt.store_geometry((4, 8, 8), "float16", False, 200)
    assert (g["shard_size"], g["chunk_size"]) == (256, 64)
    g = fmt.store_geometry((4, 8, 8), "float16", False, 40)
    assert (g["shard_size"], g["chunk_size"]) == (40, 40)
    # rows given: they win over MiB; the chunk (1 MiB = 64 rows at 4x32x32) divides them
    g = fmt.store_geometry((4, 32, 32), "float16", False, 10_000, shard_mb=1, shard_size=1000)
    assert (g["shard_size"], g["chunk_size"], g["geometry"]["rule"]) == (1000, 50, "rows")
    # the test stores' geometry (see BYTES_GEOMETRY)
    g = fmt.store_geometry(SHAPE, "float16", True, N, shard_mb=0.03, chunk_bytes=5 * 1024)
    assert (g["shard_size"], g["chunk_size"]) == (15, 5)


def test_manifest_records_layout_3_and_passes_the_schema(tmp_path):
    stream_synthetic_store(tmp_path / "s.zarr", count=10, flips=True, shard_mb=0.01)
    m = fmt.read_manifest(str(tmp_path / "s.zarr"))
    assert m["layout_version"] == 3 == fmt.LAYOUT_VERSION
    assert m["geometry"]["rule"] == "bytes" and m["geometry"]["shard_mb"] == 0.01
    assert fmt.manifest_problems(m) == []
    assert fmt.manifest_problems({**m, "geometry": {"rule": "tiles", "row_bytes": 4}}) != []


# -- byte-sized shards read back like row-sized ones ------------------------------------------------


def test_byte_sized_store_reads_back_bitwise_equal_to_row_sized(tmp_path):
    rows_url, bytes_url = tmp_path / "rows.zarr", tmp_path / "bytes.zarr"
    written = _write(rows_url, shard_size=32, chunk_size=8)
    _as_layout_2(rows_url)
    again = _write(bytes_url, shard_size=None, chunk_size=None, **BYTES_GEOMETRY)
    m = LatentStore.open(str(bytes_url)).manifest
    assert (m["shard_size"], m["chunk_size"], m["layout_version"]) == (15, 5, 3)
    np.testing.assert_array_equal(written["moments"], again["moments"])  # same input

    _assert_same_arrays(_raw(bytes_url), _raw(rows_url))
    _assert_same_arrays(_raw(bytes_url), _oracle(written))
    by_bytes, by_rows = _read_all(bytes_url), _read_all(rows_url)
    for key in by_rows:
        if key.startswith("flip="):
            assert by_bytes[key].tobytes() == by_rows[key].tobytes(), key
        else:
            assert by_bytes[key] == by_rows[key], key
    assert by_bytes["caption"][7] == "caption 7" and by_bytes["key"][96] == "img_000096"
    assert [by_bytes["status"][p] for p in SKIPPED] == ["skipped"] * 3
    assert verify_store(str(bytes_url)).ok


# -- lplkit upgrade ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shard_mb", [None, 0.03])
def test_upgrade_of_layout_2_store_keeps_every_row(tmp_path, capsys, shard_mb):
    url = tmp_path / "s.zarr"
    written = _write(url, shard_size=32, chunk_size=8)
    _as_layout_2(url)
    before_raw, before_read = _raw(url), _read_all(url)  # a layout-2 store opens without upgrade
    _assert_same_arrays(before_raw, _oracle(written))
    assert verify_store(str(url)).ok

    flags = [] if shard_mb is None else ["--shard-mb", str(shard_mb)]
    code, out, _ = run_cli(["upgrade", str(url), *flags, "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    # hand-computed: default 128 MiB -> one shard of the two 64-row chunks covering 97 rows;
    # 0.03 MiB -> 15 rows (31457 // 2052), one chunk
    new = 128 if shard_mb is None else 15
    assert result["layout_version_before"] == 2 and result["layout_version"] == 3
    assert result["resharded"]["shard_size"] == [32, new]
    assert result["resharded"]["shards"] == [4, -(-N // new)]

    m = LatentStore.open(str(url)).manifest
    assert (m["shard_size"], m["layout_version"], m["geometry"]["rule"]) == (new, 3, "bytes")
    group = zarr.open_group(str(url), mode="r", use_consolidated=False)
    assert group[fmt.MOMENTS].shards[0] == new  # the data really is in the new geometry
    _assert_same_arrays(_raw(url), before_raw)
    after = _read_all(url)
    for key in before_read:
        if key.startswith("flip="):
            assert after[key].tobytes() == before_read[key].tobytes(), key
        else:
            assert after[key] == before_read[key], key
    report = verify_store(str(url))
    assert report.ok and report.complete_shards == -(-N // new)
    assert sorted(os.listdir(url / fmt.PROGRESS_DIR)) == [
        fmt.shard_name(s) + ".json" for s in range(-(-N // new))
    ]
    assert not (url / fmt.RESHARD_DIR).exists()
    code, out, _ = run_cli(["upgrade", str(url), *flags, "--json"], capsys)
    assert code == 0 and json.loads(out)["changed"] is False


def test_upgrade_interrupted_in_its_swap_is_refused_then_finished(tmp_path, monkeypatch, capsys):
    url = tmp_path / "s.zarr"
    written = _write(url, shard_size=32, chunk_size=8)
    _as_layout_2(url)
    before = _raw(url)
    fs_cls = type(reshard.url_to_fs(str(url))[0])
    real_mv, calls = fs_cls.mv, []

    def crash_on_third_move(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 3:  # moments is swapped in, moments_flip is not
            raise OSError(5, "Input/output error")
        return real_mv(self, *args, **kwargs)

    monkeypatch.setattr(fs_cls, "mv", crash_on_third_move)
    code, _, err = run_cli(["upgrade", str(url), "--shard-mb", "0.03"], capsys)
    monkeypatch.setattr(fs_cls, "mv", real_mv)
    assert code == StoreError.exit_code and "Input/output error" in err, err

    with pytest.raises(StoreError, match="re-run `lplkit upgrade"):
        LatentStore.open(str(url))
    code, _, err = run_cli(["upgrade", str(url), "--shard-mb", "0.03"], capsys)
    assert code == 0, err
    _assert_same_arrays(_raw(url), before)
    _assert_same_arrays(_raw(url), _oracle(written))
    assert LatentStore.open(str(url)).manifest["shard_size"] == 15
    assert verify_store(str(url)).ok


# -- encode's flags ---------------------------------------------------------------------------------


def test_encode_refuses_shard_size_with_shard_mb(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    args = ["encode", "--dataset", "openmoji", "--res", "32", "--out", str(out)]
    code, _, err = run_cli([*args, "--shard-size", "8", "--shard-mb", "1"], capsys)
    assert code == 2 and "--shard-size and --shard-mb" in err
    code, _, err = run_cli([*args, "--shard-mb", "0"], capsys)
    assert code == 2 and "--shard-mb" in err
    assert not out.exists()


# -- the synthetic writer ---------------------------------------------------------------------------


def test_streaming_synthetic_writer_holds_one_shard(tmp_path):
    shard, shards, latent = 256, 24, (4, 16, 16)
    shard_bytes = shard * 2 * int(np.prod(latent)) * 4  # float32 moments of one shard: 2 MiB
    seen = []
    # the writer's first call imports torch, pyarrow's pandas bridge...: not the shard's memory
    stream_synthetic_store(tmp_path / "warm.zarr", count=8, latent_shape=latent, shard_size=8)
    tracemalloc.start()
    try:
        stream_synthetic_store(
            tmp_path / "s.zarr",
            count=shard * shards,
            latent_shape=latent,
            shard_size=shard,
            chunk_size=64,
            on_shard=lambda lo, hi, m, f: seen.append((lo, float(m[0, 0, 0, 0, 0]))),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [lo for lo, _ in seen] == list(range(0, shard * shards, shard))
    # every shard's float32 rows, its fp16 copy, zarr's buffer: a few shards' bytes, never all 24
    assert peak < 3 * shard_bytes, (peak, shard_bytes)  # measured: 2.2
    store = LatentStore.open(str(tmp_path / "s.zarr"))
    mean, _ = store.read([shard * 5 + 1])
    expected = shard_moments(0, 5, shard, latent)[1, 0].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(mean[0], expected)
