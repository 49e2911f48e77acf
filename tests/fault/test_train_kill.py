"""`lplkit train` killed with SIGKILL at seeded random steps, then re-run: it resumes and finishes
bitwise identical (CPU) to an uninterrupted run, in the final model and EMA tensors and in every
logged loss. A corrupt or partial latest checkpoint is skipped with a warning and the run falls back
to the previous one, still finishing bitwise identical.

Every run is a `python -m lplkit train` subprocess with OMP_NUM_THREADS=1 (same float reduction order
in the reference and the resumed runs). Two kill trials and three checkpoint damages run by default;
`-m slow` adds six kill trials.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lplkit.train.metrics_log import TIMING_FIELDS, read_metrics

ROOT = Path(__file__).resolve().parents[2]
STEPS, CKPT_EVERY = 16, 3
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

# A checkpoint half-written by the kill is skipped with a notice, and the writer's lock is stale.
pytestmark = [
    pytest.mark.filterwarnings("default:skipping checkpoint:UserWarning"),
    pytest.mark.filterwarnings("default:recovered stale:RuntimeWarning"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_vae_info) -> Path:
    from lplkit.store.synthetic import write_synthetic_store

    path = tmp_path_factory.mktemp("tk") / "s.zarr"
    write_synthetic_store(
        path, count=24, latent_shape=(4, 8, 8), num_classes=3, autoencoder=tiny_vae_info
    )
    return path


def _cmd(store: Path, run: Path) -> list[str]:
    return [sys.executable, "-m", "lplkit", "train", "--store", str(store), "--out", str(run),
            "--model", "DiT-T/2", "--batch-size", "8", "--lr", "1e-3", "--seed", "3",
            "--steps", str(STEPS), "--ckpt-every", str(CKPT_EVERY), "--keep-last", "2",
            "--log-every", "1", "--lpl", "--lpl-depth", "1", "--lpl-snr-min", "1",
            "--device", "cpu"]  # fmt: skip


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _result(run: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    d = run / "checkpoints" / f"step_{STEPS:08d}"
    weights = {**load_file(d / "model.safetensors"),
               **{f"ema.{k}": v for k, v in load_file(d / "ema.safetensors").items()}}  # fmt: skip
    logs = [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
            for r in read_metrics(run / "metrics.jsonl")]  # fmt: skip
    return weights, logs


@pytest.fixture(scope="module")
def reference_run(store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    _run(_cmd(store, run))
    return run


@pytest.fixture(scope="module")
def reference(reference_run) -> tuple[dict[str, torch.Tensor], list[dict]]:
    return _result(reference_run)


def _assert_identical(run: Path, reference) -> None:
    got_w, got_logs = _result(run)
    want_w, want_logs = reference
    assert got_w.keys() == want_w.keys()
    for k in want_w:
        assert torch.equal(got_w[k], want_w[k]), k
    assert [r["step"] for r in got_logs] == list(range(1, STEPS + 1))
    assert got_logs == want_logs


def _kill_at_step(store: Path, run: Path, seed: int) -> int:
    """Start a run and SIGKILL it once metrics.jsonl shows a seeded random step (plus a random
    fraction of a step); returns the last logged step at the kill."""
    rng = np.random.default_rng(seed)
    target = int(rng.integers(1, STEPS - 1))
    extra = float(rng.uniform(0.0, 0.3))
    proc = subprocess.Popen(_cmd(store, run), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if metrics.exists() and metrics.read_text().count("\n") >= target:
                break
            time.sleep(0.005)
        time.sleep(extra)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
    finally:
        proc.stderr.close()
    assert rc == -signal.SIGKILL, f"the run ended (rc {rc}) before step {target}"
    return len(read_metrics(metrics))


def _trial(store: Path, tmp_path: Path, seed: int, reference) -> None:
    run = tmp_path / f"run-{seed}"
    at = _kill_at_step(store, run, seed)
    if at < STEPS:  # (a kill after the last log, during the final save or exit, is fine too)
        assert not (run / "checkpoints" / f"step_{STEPS:08d}").exists()
    _run(_cmd(store, run))
    _assert_identical(run, reference)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_step_then_rerun_is_bitwise_identical(seed, store, tmp_path, reference):
    _trial(store, tmp_path, seed, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 16))
def test_more_sigkill_trials(seed, store, tmp_path, reference):
    _trial(store, tmp_path, seed, reference)


def _flip_model(d: Path) -> None:
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))


def _truncate_state(d: Path) -> None:
    f = d / "state.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _partial_write(d: Path) -> None:
    """A checkpoint directory a crash left without its meta.json (written last)."""
    (d / "meta.json").unlink()


DAMAGES = {"flipped_weights": _flip_model, "truncated_state": _truncate_state,
           "no_meta": _partial_write}  # fmt: skip


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_with_a_warning(
    damage, store, tmp_path, reference_run, reference
):
    """The finished reference run with its final checkpoint damaged: re-running falls back to the
    previous checkpoint, retrains the last steps and ends bitwise identical."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000015", f"step_{STEPS:08d}"]
    DAMAGES[damage](ckpts[-1])
    # a partial checkpoint write (the temp directory a crash leaves) must be ignored too
    (run / "checkpoints" / f".tmp-step_{STEPS:08d}-12345").mkdir()
    done = _run(_cmd(store, run))
    err = " ".join(done.stderr.split())
    assert "skipping checkpoint" in err and ckpts[-1].name in err and "falling back" in err, err
    assert not list((run / "checkpoints").glob(".tmp-*"))
    _assert_identical(run, reference)
