"""Encode across processes: kill -9 mid-encode then resume, and 2 gloo ranks (CPU), each compared
with an uninterrupted single-process encode (arrays byte-equal, index rows equal).

The subprocess tests start 2-3 Python processes that import torch and diffusers (~7 s CPU each), so
they are marked slow: run them with `pytest -m slow tests/integration/test_encode_processes.py`.
The default suite runs the two ranks forked from the test process (`forked_ranks`: torchrun's
environment without the launcher and without re-importing torch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_cli, subprocess_env
from helpers.images import write_image_folder
from helpers.ranks import run_forked_ranks
from helpers.stores import read_store

from lplkit.encode import EncodeConfig, encode_dataset

# Some shards are encoded here (the reference, the re-run) and some in the subprocess.
ENV = subprocess_env()

# A folder source that sleeps per image, registered through the public registry, so the encode is
# slow enough to be killed between shards. Same source id/revision as the plain folder source.
SLOW_ENCODE = textwrap.dedent(
    """
    import sys, time
    from lplkit.data import register_source
    from lplkit.data.folder import ImageFolderSource

    @register_source
    class SlowFolder(ImageFolderSource):
        prefix = "slowfolder"

        @classmethod
        def matches(cls, spec):
            return False

        def __getitem__(self, i):
            time.sleep(0.15)
            return super().__getitem__(i)

    from lplkit.cli.app import main
    main(sys.argv[1:])
    """
)


def _args(dataset: str, out: Path, vae: Path) -> list[str]:
    return [
        "encode", "--dataset", dataset, "--res", "32", "--vae", str(vae), "--out", str(out),
        "--shard-size", "4", "--batch-size", "3", "--workers", "0", "--flip", "--device", "cpu",
    ]  # fmt: skip


def _reference(images: Path, vae: Path, out: Path) -> dict:
    cfg = EncodeConfig(
        dataset=str(images), out=str(out), vae=str(vae), res=32, shard_size=4, batch_size=3,
        workers=0, flip=True, device="cpu",
    )  # fmt: skip
    encode_dataset(cfg)
    return read_store(out)


def _assert_same_store(a: dict, b: dict) -> None:
    for name in ("moments", "moments_flip", "labels"):
        assert a[name].dtype == b[name].dtype
        assert a[name].tobytes() == b[name].tobytes(), name
    assert a["index"] == b["index"]
    assert a["manifest"]["counts"] == b["manifest"]["counts"]


@pytest.mark.slow
def test_kill_9_mid_encode_then_resume_equals_uninterrupted(tiny_vae_dir, tmp_path):
    images = write_image_folder(tmp_path / "images", {"a": 10, "b": 10})  # 5 shards of 4
    script = tmp_path / "slow_encode.py"
    script.write_text(SLOW_ENCODE)
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, str(script), *_args(f"slowfolder:{images}", out, tiny_vae_dir)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = out / "progress"
    deadline = time.monotonic() + 120
    while not (progress.is_dir() and any(progress.glob("shard-*.json"))):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard completed within 120 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done_at_kill = len(list(progress.glob("shard-*.json")))
    assert 1 <= done_at_kill < 5, "the encode finished before it could be killed"
    assert not (out / "index.parquet").exists()

    resumed = subprocess.run(
        [*cmd, "--json"], env=ENV, capture_output=True, text=True, timeout=300, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["shards_already_done"] == done_at_kill
    assert summary["shards_written"] == 5 - done_at_kill and summary["completed"] is True
    _assert_same_store(read_store(out), _reference(images, tiny_vae_dir, tmp_path / "ref.zarr"))


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one_process(tiny_vae_dir, tmp_path):
    images = write_image_folder(tmp_path / "images", {"a": 6, "b": 5, "c": 3})  # 4 shards
    out = tmp_path / "ddp.zarr"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "lplkit", *_args(str(images), out, tiny_vae_dir), "--json",
    ]  # fmt: skip
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    try:
        summary = json.loads(run.stdout)  # only rank 0 prints
    except ValueError:
        pytest.fail(f"no JSON summary on stdout:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    assert (summary["world_size"], summary["encoded"], summary["shards_written"]) == (2, 14, 4)
    ranks = {}
    for marker in sorted((out / "progress").glob("shard-*.json")):
        m = json.loads(marker.read_text())
        ranks[m["shard"]] = m["rank"]
    assert ranks == {0: 0, 1: 1, 2: 0, 3: 1}  # each rank wrote its own whole shards
    _assert_same_store(read_store(out), _reference(images, tiny_vae_dir, tmp_path / "ref.zarr"))


def test_two_forked_gloo_ranks_equal_one_process(tiny_vae_dir, tmp_path):
    """The torchrun test above in the default suite: two ranks with torchrun's environment (gloo),
    forked from this process; one torch thread in the ranks and in the reference, so the stores
    are byte-equal."""
    import torch

    images = write_image_folder(tmp_path / "images", {"a": 6, "b": 5, "c": 3})  # 4 shards
    out = tmp_path / "ddp.zarr"
    args = _args(str(images), out, tiny_vae_dir)
    assert run_forked_ranks(lambda rank: run_cli(args)[0]) == [0, 0]
    ranks = {}
    for marker in sorted((out / "progress").glob("shard-*.json")):
        m = json.loads(marker.read_text())
        ranks[m["shard"]] = m["rank"]
    assert ranks == {0: 0, 1: 1, 2: 0, 3: 1}  # each rank wrote its own whole shards
    assert read_store(out)["manifest"]["counts"]["ok"] == 14
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = _reference(images, tiny_vae_dir, tmp_path / "ref.zarr")
    finally:
        torch.set_num_threads(threads)
    _assert_same_store(read_store(out), ref)


def test_dataloader_workers_give_the_same_store(tiny_vae_dir, tmp_path):
    images = write_image_folder(tmp_path / "images", {"a": 4, "b": 3})
    ref = _reference(images, tiny_vae_dir, tmp_path / "ref.zarr")
    cfg = EncodeConfig(
        dataset=str(images), out=str(tmp_path / "w.zarr"), vae=str(tiny_vae_dir), res=32,
        shard_size=4, batch_size=3, workers=2, flip=True, device="cpu",
    )  # fmt: skip
    encode_dataset(cfg)
    _assert_same_store(read_store(tmp_path / "w.zarr"), ref)
    assert np.all(ref["labels"] == [0, 0, 0, 0, 1, 1, 1])
