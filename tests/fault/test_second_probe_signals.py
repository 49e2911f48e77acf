"""Issue #28, bugs 1, 2 and 10 of the second adversarial probe, each reproduced as the probe did.

1. Ctrl-C made every command exit 0 and print nothing (typer returned 130 and `main` exited 0):
   `encode`, `train` (real SIGINT to a subprocess) and `stats` (a real SIGINT to this process from
   inside the statistics loop) now exit 130 with one line saying what was kept.
2. Re-running `train` into a run with another `--store` resumed on the other data and rewrote
   config.json/run.json: now refused in one line before anything is written; the same store moved
   to another path still resumes (run.json records the store's content hash).
10. The logged `lr` was the next step's (read after `scheduler.step()`): checked against a hand
   computation of the warm-up + cosine schedule in metrics.jsonl, TensorBoard and the summary.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import run_cli, subprocess_env
from helpers.images import write_image_folder
from helpers.slow_source import SCRIPT as SLOW_SOURCE
from helpers.stores import write_stats_store

HERE = Path(__file__).resolve().parent
ENV = subprocess_env()

pytestmark = pytest.mark.filterwarnings("default:recovered stale:RuntimeWarning")


def _store(path: Path, vae_dir: Path, seed: int = 0) -> Path:
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store.synthetic import write_synthetic_store

    info = autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir))
    write_synthetic_store(path, count=24, latent_shape=(4, 8, 8), num_classes=3, autoencoder=info,
                          seed=seed)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def stores(tiny_vae_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stores")
    return _store(root / "a.zarr", tiny_vae_dir, 0), _store(root / "b.zarr", tiny_vae_dir, 1)


def _train_args(store: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--store", str(store), "--out", str(run), "--model", "DiT-T/2",
            "--batch-size", "8", "--lr", "1e-3", "--seed", "3", "--log-every", "1",
            "--device", "cpu", *extra]  # fmt: skip


def _last_line(stderr: str) -> str:
    return " ".join(stderr.strip().splitlines()[-1].split())


def _default_sigint() -> None:
    """Child setup: Ctrl-C handled as a terminal would deliver it. A test run started in the
    background (`cmd &`, nohup, some CI runners) inherits SIGINT ignored, and Python then never
    raises KeyboardInterrupt, so the tests below would see a run that ignores Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 240) -> str:
    """Send `sig` to `proc` once `ready()` holds; returns its stderr after it exits."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready():
        assert time.monotonic() < deadline, "the command did not get far enough in time"
        time.sleep(0.01)
    assert proc.poll() is None, f"it ended (rc {proc.returncode}) before the signal"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return err


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


# ------------------------------------------------------------------------------------- bug 1
def test_sigint_to_train_exits_130_naming_the_last_checkpoint(stores, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lplkit",
           *_train_args(stores[0], run, "--steps", "400", "--ckpt-every", "4")]  # fmt: skip
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)  # fmt: skip
    err = _signal_when(proc, lambda: _lines(run / "metrics.jsonl") >= 5, signal.SIGINT)
    assert proc.returncode == 130, err[-2000:]
    line = _last_line(err)
    m = re.fullmatch(r"train interrupted after step (\d+) of 400: the last checkpoint is step "
                     r"(\d+); re-run the same command to resume from it", line)  # fmt: skip
    assert m, line
    newest = sorted((run / "checkpoints").glob("step_*"))[-1]
    assert newest.name == f"step_{int(m[2]):08d}" and int(m[2]) <= int(m[1]) < 400


def test_sigint_to_encode_exits_130_counting_complete_shards(tiny_vae_dir, tmp_path):
    images = write_image_folder(tmp_path / "images", {"a": 12, "b": 12})
    out = tmp_path / "s.zarr"
    args = ["encode", "--dataset", f"slowfolder:{images}", "--res", "32", "--vae",
            str(tiny_vae_dir), "--out", str(out), "--shard-size", "4", "--batch-size", "2",
            "--workers", "0", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(SLOW_SOURCE), *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)  # fmt: skip
    markers = out / "progress"
    err = _signal_when(proc, lambda: len(list(markers.glob("shard-*.json"))) >= 1, signal.SIGINT)
    assert proc.returncode == 130, err[-2000:]
    done = len(list(markers.glob("shard-*.json")))
    assert _last_line(err) == (
        f"encode interrupted: {done}/6 shards complete; re-run the same command to resume"
    )
    assert 1 <= done < 6 and not (out / "index.parquet").exists()
    import helpers.slow_source  # noqa: F401  (registers slowfolder: in this process)

    assert run_cli(args)[0] == 0  # the same command finishes the store


def test_sigint_in_stats_exits_130_and_writes_nothing(tiny_vae_dir, tmp_path, monkeypatch, capsys):
    import lplkit.stats.compute as compute

    url = tmp_path / "s.zarr"
    write_stats_store(url, tiny_vae_dir)
    real, calls = compute.item_latents, []

    def interrupted_on_the_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # the pilot, one batch, then Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(compute, "item_latents", interrupted_on_the_second_batch)
    # this process may have inherited SIGINT ignored (see _default_sigint)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, _, err = run_cli(["stats", str(url), "--batch-size", "2", "--device", "cpu"], capsys)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130, err
    assert _last_line(err) == (
        "stats interrupted: nothing written, the store's current statistics (if any) are "
        "unchanged; re-run the same command to compute them"
    )
    import zarr

    assert "stats" not in zarr.open_group(str(url), mode="r")


# ------------------------------------------------------------------------------------- bug 2
def test_resume_with_another_store_is_refused_but_a_moved_store_resumes(stores, tmp_path, capsys):
    a, b = stores
    run = tmp_path / "run"
    assert run_cli(_train_args(a, run, "--steps", "2"), capsys)[0] == 0
    before = {f: (run / f).read_bytes() for f in ("config.json", "run.json", "metrics.jsonl")}

    code, _, err = run_cli(_train_args(b, run, "--steps", "4"), capsys)
    assert code == 2, err
    line = _last_line(err)
    assert line.startswith(f"error: {run} was trained on the store {a};"), line
    assert f"--store {b} holds other latents" in line and f"--init {run}" in line, line
    assert {f: (run / f).read_bytes() for f in before} == before  # nothing rewritten
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    assert json.loads(before["run.json"])["store"]["content_hash"]

    moved = tmp_path / "moved.zarr"  # the same latents at another path: resumes
    shutil.copytree(a, moved)
    code, out, err = run_cli(_train_args(moved, run, "--steps", "4", "--json"), capsys)
    assert code == 0, err
    assert json.loads(out)["resumed_from"] == 2
    info = json.loads((run / "run.json").read_text())["store"]
    assert info["url"] == str(moved)
    assert info["content_hash"] == json.loads(before["run.json"])["store"]["content_hash"]


def test_run_without_a_content_hash_resumes_only_on_the_same_path(stores, tmp_path, capsys):
    """A run.json written before the hash was recorded: the path is all there is to compare."""
    a, b = stores
    run = tmp_path / "run"
    assert run_cli(_train_args(a, run, "--steps", "2"), capsys)[0] == 0
    info = json.loads((run / "run.json").read_text())
    del info["store"]["content_hash"]
    (run / "run.json").write_text(json.dumps(info))
    code, _, err = run_cli(_train_args(b, run, "--steps", "3"), capsys)
    assert code == 2 and "records the path only" in err, err
    assert run_cli(_train_args(a, run, "--steps", "3"), capsys)[0] == 0


# ------------------------------------------------------------------------------------- bug 10
def test_logged_lr_is_the_one_each_step_used(stores, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = _train_args(stores[0], run, "--steps", "4", "--warmup", "2", "--lr-schedule", "cosine",
                       "--json")  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    # By hand: step k (0-based) uses 1e-3 * (k + 1) / 2 during the 2 warm-up steps, then
    # 1e-3 * 0.5 * (1 + cos(pi * (k - 2) / (4 - 2))): 5e-4, 1e-3, 1e-3, 5e-4.
    want = [5e-4, 1e-3, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5))]
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx(want, rel=1e-12, abs=0)
    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()
    assert [e.value for e in tb.Scalars("lr")] == pytest.approx(want, rel=1e-6)
    assert json.loads(out)["last_metrics"]["lr"] == pytest.approx(5e-4, rel=1e-12)
