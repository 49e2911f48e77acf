"""A bucketed `lplkit encode --buckets` killed with SIGKILL in the middle of a bucket (after its
first shard's completion marker appears, before the others), then re-run: every bucket's arrays
equal an uninterrupted encode's byte for byte and the root index row for row (issue #25).

The killed encode is a subprocess reading the folder through `slow_source.SlowFolder` (50 ms per
image: the header pre-pass and the encode both read through it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from helpers.cli import run_cli, subprocess_env
from helpers.slow_source import SCRIPT as SLOW_SOURCE
from PIL import Image

SPEC = "48x24,32x32,24x48"
ARRAYS = ("moments", "labels")
pytestmark = pytest.mark.filterwarnings("default:recovered stale:RuntimeWarning")


def _args(dataset: str, out: Path, vae: Path) -> list[str]:
    return ["encode", "--dataset", dataset, "--res", "32", "--vae", str(vae), "--out", str(out),
            "--buckets", SPEC, "--shard-size", "2", "--batch-size", "2", "--workers", "0",
            "--device", "cpu"]  # fmt: skip


def _read(out: Path) -> dict:
    manifest = dict(zarr.open_group(str(out), mode="r").attrs["lplkit"])
    arrays = {}
    for b in range(len(manifest["buckets"])):
        group = zarr.open_group(str(out / "buckets" / str(b)), mode="r")
        for name in ARRAYS:
            arrays[f"{b}/{name}"] = np.asarray(group[name][:])
    return {"manifest": manifest, "arrays": arrays,
            "index": pq.read_table(out / "index.parquet").to_pylist()}  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill-bk") / "img"
    root.mkdir()
    rng = np.random.default_rng(0)
    shapes = [(40, 80)] * 6 + [(50, 50)] * 2 + [(80, 40)] * 2  # bucket 0 (tall): 3 shards
    for i, (w, h) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def test_sigkill_mid_bucket_then_rerun_equals_uninterrupted(images, tiny_vae_dir, tmp_path,
                                                            monkeypatch, capsys):  # fmt: skip
    ref = tmp_path / "ref.zarr"
    assert run_cli(_args(str(images), ref, tiny_vae_dir))[0] == 0
    reference = _read(ref)

    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, str(SLOW_SOURCE), *_args(f"slowfolder:{images}", out, tiny_vae_dir)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 600  # a loaded 2-core box: imports alone can take minutes
    while not list(out.glob("buckets/*/progress/shard-*.json")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no shard was written within 600 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    proc.stderr.close()
    markers = list(out.glob("buckets/*/progress/shard-*.json"))
    assert 1 <= len(markers) < 5 and not (out / "index.parquet").exists()  # 5 shards in all
    assert 1 <= len(list(out.glob("buckets/0/progress/shard-*.json"))) < 3  # killed mid-bucket

    import helpers.slow_source  # noqa: F401  (registers slowfolder: in this process)

    monkeypatch.setenv("LPLKIT_SLOW_SOURCE_S", "0")
    code, _, err = run_cli(_args(f"slowfolder:{images}", out, tiny_vae_dir), capsys)
    assert code == 0, err
    got = _read(out)
    assert got["manifest"]["buckets"] == reference["manifest"]["buckets"]
    assert got["index"] == reference["index"]
    for name, values in reference["arrays"].items():
        assert got["arrays"][name].tobytes() == values.tobytes(), name
    from lplkit.store.verify import verify_store

    assert verify_store(str(out)).ok and not (out / ".lplkit-lock.json").exists()
