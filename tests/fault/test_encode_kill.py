"""`lplkit encode` killed with SIGKILL at seeded random moments, then re-run: the store equals an
uninterrupted one byte for byte in the arrays and row for row in the index; no sample lost or
duplicated. Two trials run by default; `-m slow` runs ten more.

The killed encode is a subprocess of the lplkit CLI reading a folder through `slow_source.SlowFolder`
(50 ms per image, so the write phase lasts ~2 s); it is killed a seeded uniform delay in [0, 2] s
after its writer lock appears, i.e. anywhere from store creation through the shard writes and the
finalize. The re-run is the same CLI command in this process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_cli, subprocess_env
from helpers.images import write_image_folder
from helpers.slow_source import SCRIPT as SLOW_SOURCE
from helpers.stores import read_store

HERE = Path(__file__).resolve().parent
N_IMAGES, SHARD = 24, 4  # 6 shards
ARRAYS = ("moments", "moments_flip", "labels")
# Some shards are encoded here (the reference, the re-run) and some in the subprocess.
ENV = subprocess_env()

# Recovering from a killed/damaged writer is the point here: lplkit's recovery notice is expected
# (shown, as users see it; not an error).
pytestmark = pytest.mark.filterwarnings("default:recovered stale:RuntimeWarning")


def _args(dataset: str, out: Path, vae: Path) -> list[str]:
    return ["encode", "--dataset", dataset, "--res", "32", "--vae", str(vae), "--out", str(out),
            "--shard-size", str(SHARD), "--batch-size", "3", "--workers", "0", "--flip",
            "--device", "cpu"]  # fmt: skip


def _main(args: list[str]) -> None:
    assert run_cli(args)[0] == 0


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("kill") / "images", {"a": 12, "b": 12})


@pytest.fixture(scope="module")
def reference(images, tiny_vae_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    _main(_args(str(images), out, tiny_vae_dir))
    return read_store(out)


def kill_and_resume(seed: int, images: Path, vae: Path, out: Path, monkeypatch, capsys) -> dict:
    """One trial; returns what the killed run had left (for the caller's statistics)."""
    rng = np.random.default_rng(seed)
    delay = float(rng.uniform(0.0, 2.0))
    cmd = [sys.executable, str(SLOW_SOURCE), *_args(f"slowfolder:{images}", out, vae)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = out / ".lplkit-lock.json"
    deadline = time.monotonic() + 180
    while not lock.exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the encode did not start within 180 s"
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    rc = proc.wait()
    proc.stderr.close()
    left = {
        "delay": delay,
        "killed": rc == -signal.SIGKILL,
        "markers": len(list((out / "progress").glob("shard-*.json"))),
        "finalized": (out / "index.parquet").exists(),
        "lock_left": lock.exists(),
    }
    import helpers.slow_source  # noqa: F401  (registers slowfolder: in this process)

    monkeypatch.setenv("LPLKIT_SLOW_SOURCE_S", "0")
    capsys.readouterr()
    code, _, err = run_cli(_args(f"slowfolder:{images}", out, vae), capsys)
    assert code == 0, err
    if left["lock_left"]:  # the dead writer's lock: the re-run must recover it, saying so
        assert "warning: recovered stale store lock" in err, left
    return left


def _assert_equal(out: Path, reference: dict, images: Path) -> None:
    from lplkit.store.verify import verify_store

    got = read_store(out)
    for name in ARRAYS:
        assert got[name].dtype == reference[name].dtype
        assert got[name].tobytes() == reference[name].tobytes(), name
    assert got["index"] == reference["index"]
    assert got["manifest"]["counts"] == reference["manifest"]["counts"]
    positions = [r["position"] for r in got["index"]]
    keys = [r["key"] for r in got["index"]]
    assert positions == list(range(N_IMAGES))  # none lost, none duplicated
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.*"))
    assert sorted(keys) == files and len(set(keys)) == N_IMAGES
    assert verify_store(str(out)).ok
    assert not (out / ".lplkit-lock.json").exists()


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_rerun_equals_uninterrupted(
    seed, images, tiny_vae_dir, reference, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "killed.zarr"
    left = kill_and_resume(seed, images, tiny_vae_dir, out, monkeypatch, capsys)
    assert left["killed"], left
    _assert_equal(out, reference, images)


@pytest.mark.slow
def test_ten_seeded_sigkill_trials(images, tiny_vae_dir, reference, tmp_path, monkeypatch, capsys):
    outcomes = []
    for seed in range(100, 110):
        out = tmp_path / f"killed-{seed}.zarr"
        outcomes.append(kill_and_resume(seed, images, tiny_vae_dir, out, monkeypatch, capsys))
        _assert_equal(out, reference, images)
    n_shards = N_IMAGES // SHARD
    mid = [o for o in outcomes if o["killed"] and 0 < o["markers"] < n_shards]
    # the delays must actually interrupt writes, not only land before or after them
    assert len(mid) >= 3, outcomes
