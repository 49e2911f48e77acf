"""StoreWriter: round trip, checksums, resume, refusal of mismatched stores, rank ownership."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from helpers.cli import REPO

from lplkit.errors import StoreError, StoreMismatchError
from lplkit.store import LatentStore, StoreWriter, new_manifest
from lplkit.store.synthetic import synthetic_moments, write_synthetic_store


def _manifest(count=40, **kw):
    args = dict(
        autoencoder={"id": "ae", "class": "AutoencoderKL", "config_hash": "abc"},
        resolution=32,
        latent_shape=(4, 4, 4),
        source={"id": "src", "split": "train", "count": count},
        shard_size=16,
        chunk_size=4,
    )
    args.update(kw)
    return new_manifest(**args)


def _write(writer, shards, moments, flip=None):
    for s in shards:
        lo, hi = writer.shard_range(s)
        rows = [{"key": f"k{p}", "status": "ok"} for p in range(lo, hi)]
        writer.write_shard(
            s, moments[lo:hi], None if flip is None else flip[lo:hi], np.arange(lo, hi) % 3, rows
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip_equals_dtype_cast(tmp_path, dtype):
    ref = write_synthetic_store(
        tmp_path / "s.zarr", count=50, flips=True, dtype=dtype, skipped=[7, 33]
    )
    store = LatentStore.open(tmp_path / "s.zarr")
    if dtype == "bfloat16":  # numpy has no bfloat16: torch is the oracle (the store uses bit ops)
        cast = torch.from_numpy(ref["moments"]).to(torch.bfloat16).float().numpy()
        cast_f = torch.from_numpy(ref["moments_flip"]).to(torch.bfloat16).float().numpy()
    else:  # the store casts float16 with torch: numpy is the oracle
        cast = ref["moments"].astype(dtype).astype(np.float32)
        cast_f = ref["moments_flip"].astype(dtype).astype(np.float32)
    order = [49, 0, 7, 12, 12, 31]
    mean, std = store.read(order)
    np.testing.assert_array_equal(mean, cast[order, 0])
    np.testing.assert_array_equal(std, cast[order, 1])
    mean_f, _ = store.read(order, flip=True)
    np.testing.assert_array_equal(mean_f, cast_f[order, 0])
    assert mean.dtype == np.float32
    np.testing.assert_array_equal(store.labels, np.arange(50) % 10)
    assert (store.read([7])[0] == 0).all()  # skipped rows are zeros
    assert store.ok_positions.tolist() == [p for p in range(50) if p not in (7, 33)]
    assert store.manifest["counts"] == {"total": 50, "ok": 48, "skipped": 2}
    index = store.index.to_pylist()
    assert [r["position"] for r in index] == list(range(50))
    assert index[7]["status"] == "skipped" and index[7]["reason"] == "synthetic skip"


def test_marker_checksum_is_sha256_of_stored_bytes(tmp_path):
    ref = write_synthetic_store(tmp_path / "s.zarr", count=40, shard_size=16, chunk_size=4)
    marker = json.loads((tmp_path / "s.zarr" / "progress" / "shard-00001.json").read_text())
    assert (marker["start"], marker["stop"], marker["n_ok"]) == (16, 32, 16)
    fp16 = ref["moments"][16:32].astype(np.float16)
    assert marker["checksums"]["moments"] == hashlib.sha256(fp16.tobytes()).hexdigest()
    labels = ref["labels"][16:32].astype(np.int32)
    assert marker["checksums"]["labels"] == hashlib.sha256(labels.tobytes()).hexdigest()


def test_resume_skips_complete_shards_and_equals_uninterrupted(tmp_path):
    m = synthetic_moments(40, (4, 4, 4))
    with StoreWriter.create_or_resume(str(tmp_path / "a.zarr"), _manifest()) as w:
        assert w.pending_shards() == [0, 1, 2]
        _write(w, [0, 1, 2], m)
        w.finalize()
    # Interrupted run: shard 0 done, shard 1 data written but no marker (crash before it).
    with StoreWriter.create_or_resume(str(tmp_path / "b.zarr"), _manifest()) as w:
        _write(w, [0], m)
        w.group["moments"][16:32] = np.full((16, 2, 4, 4, 4), 9, np.float16)  # half-written garbage
    first = json.loads((tmp_path / "b.zarr" / "progress" / "shard-00000.json").read_text())
    with StoreWriter.create_or_resume(str(tmp_path / "b.zarr"), _manifest()) as w:
        assert w.pending_shards() == [1, 2]
        with pytest.raises(StoreError, match="not complete"):
            w.finalize()
        _write(w, w.pending_shards(), m)
        w.finalize()
    again = json.loads((tmp_path / "b.zarr" / "progress" / "shard-00000.json").read_text())
    assert again["written_at"] == first["written_at"]  # shard 0 was not rewritten
    ga, gb = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("a.zarr", "b.zarr"))
    for name in ("moments", "labels"):
        np.testing.assert_array_equal(ga[name][:], gb[name][:])
    assert pq.read_table(tmp_path / "a.zarr" / "index.parquet").equals(
        pq.read_table(tmp_path / "b.zarr" / "index.parquet")
    )


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("autoencoder", {"id": "other-ae", "class": "AutoencoderKL", "config_hash": "abc"}),
        ("autoencoder", {"id": "ae", "class": "AutoencoderKL", "config_hash": "zzz"}),
        ("resolution", 64),
        ("crop", "center"),
        ("dtype", "float32"),
        ("flips", True),
        ("shard_size", 8),
        ("source", {"id": "src", "split": "val", "count": 40}),
    ],
)
def test_mismatched_store_is_refused(tmp_path, field, change):
    url = str(tmp_path / "s.zarr")
    with StoreWriter.create_or_resume(url, _manifest()):
        pass
    with pytest.raises(StoreMismatchError, match=field) as info:
        StoreWriter.create_or_resume(url, _manifest(**{field: change}))
    assert "new --out" in str(info.value)
    # The refusal released the lock: a matching request still works.
    StoreWriter.create_or_resume(url, _manifest()).close()


def test_ranks_own_disjoint_shards_and_fill_the_store(tmp_path):
    url = str(tmp_path / "s.zarr")
    m = synthetic_moments(40, (4, 4, 4))
    w0 = StoreWriter.create_or_resume(url, _manifest(), rank=0, world_size=2)
    w1 = StoreWriter.create_or_resume(url, _manifest(), rank=1, world_size=2, wait_timeout=5)
    assert (w0.pending_shards(), w1.pending_shards()) == ([0, 2], [1])
    with pytest.raises(StoreError, match="owned by rank 0"):
        _write(w1, [0], m)
    _write(w1, w1.pending_shards(), m)
    _write(w0, w0.pending_shards(), m)
    with pytest.raises(StoreError, match="rank 0"):
        w1.finalize()
    w0.finalize()
    w0.close()
    np.testing.assert_array_equal(
        LatentStore.open(url).read(range(40))[0], m[:, 0].astype(np.float16)
    )


def test_rank_waits_times_out_without_rank0(tmp_path):
    with pytest.raises(StoreError, match="rank 0 did not create"):
        StoreWriter.create_or_resume(
            str(tmp_path / "s.zarr"), _manifest(), rank=1, world_size=2, wait_timeout=0.3
        )


def test_fp16_overflow_is_refused(tmp_path):
    m = synthetic_moments(40, (4, 4, 4))
    m[3, 0, 0, 0, 0] = 1e6  # beyond float16's 65504
    with StoreWriter.create_or_resume(str(tmp_path / "s.zarr"), _manifest()) as w:
        with pytest.raises(StoreError, match=r"positions \[3\].*float16"):
            _write(w, [0], m)
        assert w.pending_shards() == [0, 1, 2]


def test_memory_url_round_trip():
    ref = write_synthetic_store(
        "memory://lplkit-test/s.zarr", count=30, flips=True, shard_size=8, chunk_size=4
    )
    store = LatentStore.open("memory://lplkit-test/s.zarr")
    np.testing.assert_array_equal(
        store.read([29, 1])[1], ref["moments"][[29, 1], 1].astype(np.float16)
    )
    assert len(store.index) == 30


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize(
    ("where", "value"),
    [((5, 0, 1, 2, 3), np.nan), ((5, 0, 0, 0, 0), -np.inf), ((5, 1, 3, 3, 3), -0.1)],
)
def test_nonfinite_or_negative_std_is_refused_in_every_dtype(tmp_path, dtype, where, value):
    m = synthetic_moments(40, (4, 4, 4))
    m[where] = value
    with StoreWriter.create_or_resume(str(tmp_path / "s.zarr"), _manifest(dtype=dtype)) as w:
        with pytest.raises(StoreError, match=r"positions \[5\]"):
            _write(w, [0], m)
        # The same sample marked skipped is stored as zeros and accepted.
        rows = [{"key": f"k{p}", "status": "skipped" if p == 5 else "ok"} for p in range(16)]
        w.write_shard(0, m[:16], None, np.arange(16) % 3, rows)
        assert w.pending_shards() == [1, 2]
        assert (w.group["moments"][5] == 0).all()


_WORKER = """
import json, sys, time, numpy as np
from lplkit.store import StoreWriter
from lplkit.store.synthetic import synthetic_moments
url, rank, world, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
manifest = json.loads(sys.argv[5])
m = synthetic_moments(40, (4, 4, 4))
w = StoreWriter.create_or_resume(url, manifest, rank=rank, world_size=world, wait_timeout=60)
for s in w.pending_shards():
    lo, hi = w.shard_range(s)
    w.write_shard(s, m[lo:hi], None, np.arange(lo, hi) % 3, [{"key": f"k{p}"} for p in range(lo, hi)])
    time.sleep(delay)
w.close()
"""


def _spawn(url, rank, world, delay=0.0):
    import json
    import subprocess
    import sys

    args = [url, str(rank), str(world), str(delay), json.dumps(_manifest())]
    return subprocess.Popen([sys.executable, "-c", _WORKER, *args], cwd=REPO)


def test_two_writer_processes_then_kill9_and_resume(tmp_path):
    """Real processes: rank 1 waits for rank 0's store, both write disjoint shards concurrently.
    Then a writer killed with SIGKILL mid-run leaves a stale lock; the re-run recovers and the
    result equals an uninterrupted store."""
    import signal
    import time

    m = synthetic_moments(40, (4, 4, 4))
    ref = str(tmp_path / "ref.zarr")
    with StoreWriter.create_or_resume(ref, _manifest()) as w:
        _write(w, range(w.n_shards), m)
        w.finalize()

    url = str(tmp_path / "two.zarr")
    procs = [_spawn(url, 1, 2), _spawn(url, 0, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with StoreWriter.create_or_resume(url, _manifest()) as w:
        assert w.all_pending_shards() == []
        w.finalize()

    killed = str(tmp_path / "killed.zarr")
    proc = _spawn(killed, 0, 1, delay=30.0)  # writes shard 0, then sleeps
    marker = tmp_path / "killed.zarr" / "progress" / "shard-00000.json"
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with pytest.warns(RuntimeWarning, match="stale store lock"):
        w = StoreWriter.create_or_resume(killed, _manifest())
    with w:
        assert w.pending_shards() == [1, 2]
        _write(w, w.pending_shards(), m)
        w.finalize()

    for other in (url, killed):
        a, b = zarr.open_group(ref, mode="r"), zarr.open_group(other, mode="r")
        for name in ("moments", "labels"):
            np.testing.assert_array_equal(a[name][:], b[name][:])
        assert pq.read_table(f"{ref}/index.parquet").equals(pq.read_table(f"{other}/index.parquet"))


def test_rewriting_a_shard_of_a_finished_store_unfinishes_it(tmp_path):
    url = str(tmp_path / "s.zarr")
    write_synthetic_store(url, count=40, latent_shape=(4, 4, 4), shard_size=16, chunk_size=4)
    m = synthetic_moments(40, (4, 4, 4), seed=7)
    manifest = dict(zarr.open_group(url, mode="r").attrs["lplkit"])
    with StoreWriter.create_or_resume(url, manifest) as w:
        assert w.pending_shards() == []
        _write(w, [1], m)
        with pytest.raises(StoreError, match="not finished"):
            LatentStore.open(url)
        w.finalize()
    mean, _ = LatentStore.open(url).read(range(16, 32))
    np.testing.assert_array_equal(mean, m[16:32, 0].astype(np.float16))
