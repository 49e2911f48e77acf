"""Preemption (issue #28): SIGTERM or SIGUSR1 stops `train`, `encode` and `stats` at a safe point with
exit 75 and one line, and re-running the same command ends bitwise equal to an uninterrupted run.

- train, 1 process: the signal arrives between checkpoints (`--ckpt-every` larger than the run);
  the step in flight finishes and is checkpointed, so no step is lost; the re-run equals the
  reference in the final model/EMA tensors and every logged loss.
- train, 2 ranks (torchrun, gloo): the signal reaches one worker only; the ranks agree (one
  all-reduced flag per step), both stop after the same step, rank 0 writes one checkpoint, and the
  resumed 2-rank run equals an uninterrupted 2-rank run bitwise. `-m slow` adds the signal sent to
  torchrun itself, which forwards it to every worker.
- encode: the shard in flight is dropped, complete shards are kept; the re-run equals a one-go store.
- stats: nothing is written; the re-run equals an uninterrupted run.

The interrupted runs are subprocesses with this process's torch thread count (`subprocess_env`), so
their float reduction order matches the in-process references.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_cli, subprocess_env
from helpers.images import write_image_folder
from helpers.slow_source import SCRIPT as SLOW_SOURCE
from helpers.stores import read_store, write_stats_store
from safetensors.torch import load_file

from lplkit.train.metrics_log import TIMING_FIELDS, read_metrics

HERE = Path(__file__).resolve().parent
ENV = subprocess_env()
STEPS = 16
PREEMPTED = 75

pytestmark = pytest.mark.filterwarnings("default:recovered stale:RuntimeWarning")


@pytest.fixture(scope="module")
def store(tiny_vae_info, tmp_path_factory) -> Path:
    from lplkit.store.synthetic import write_synthetic_store

    path = tmp_path_factory.mktemp("pre") / "s.zarr"
    write_synthetic_store(
        path, count=24, latent_shape=(4, 8, 8), num_classes=3, autoencoder=tiny_vae_info
    )
    return path


def _train_args(store: Path, run: Path, steps: int = STEPS) -> list[str]:
    # --ckpt-every beyond the run: the only checkpoint before the end is the preemption's
    return ["train", "--store", str(store), "--out", str(run), "--model", "DiT-T/2",
            "--batch-size", "8", "--lr", "1e-3", "--seed", "3", "--steps", str(steps),
            "--ckpt-every", "1000", "--log-every", "1", "--device", "cpu",
            "--set", "log.tensorboard=false", "--set", "model.label_dropout=0.3"]  # fmt: skip


def _result(run: Path, steps: int = STEPS) -> tuple[dict[str, torch.Tensor], list[dict]]:
    d = run / "checkpoints" / f"step_{steps:08d}"
    weights = {**load_file(d / "model.safetensors"),
               **{f"ema.{k}": v for k, v in load_file(d / "ema.safetensors").items()}}  # fmt: skip
    logs = [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
            for r in read_metrics(run / "metrics.jsonl")]  # fmt: skip
    return weights, logs


def _assert_identical(got, want, steps: int = STEPS) -> None:
    (gw, gl), (ww, wl) = got, want
    assert gw.keys() == ww.keys()
    for k in ww:
        assert torch.equal(gw[k], ww[k]), k
    assert [r["step"] for r in gl] == list(range(1, steps + 1))
    assert gl == wl


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _signal_when(proc: subprocess.Popen, ready, send, timeout: float = 300) -> str:
    """Call `send()` once `ready()` holds while `proc` runs; returns `proc`'s stderr."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready():
        assert time.monotonic() < deadline, "the command did not get far enough in time"
        time.sleep(0.01)
    assert proc.poll() is None, f"it ended (rc {proc.returncode}) before the signal"
    send()
    _, err = proc.communicate(timeout=timeout)
    return err


def _preempt_line(err: str) -> str:
    return " ".join(err.strip().splitlines()[-1].split())


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    assert run_cli(_train_args(store, run))[0] == 0
    return _result(run)


def test_stop_signals_restores_the_previous_handlers():
    from lplkit.preemption import PREEMPT_SIGNALS, stop_signals

    def mine(signum, frame):
        raise AssertionError("not expected to run")

    before = {s: signal.signal(s, mine) for s in PREEMPT_SIGNALS}
    try:
        with stop_signals() as stop:
            assert all(signal.getsignal(s) is not mine for s in PREEMPT_SIGNALS)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
            assert stop.requested and stop.name == "SIGUSR1"
            os.kill(os.getpid(), signal.SIGTERM)  # the first signal wins
            assert stop.name == "SIGUSR1"
        assert all(signal.getsignal(s) is mine for s in PREEMPT_SIGNALS)
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_signal_between_checkpoints_loses_no_step(sig, store, reference, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lplkit", *_train_args(store, run)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    err = _signal_when(proc, lambda: _lines(run / "metrics.jsonl") >= 2,
                       lambda: proc.send_signal(getattr(signal, sig)))  # fmt: skip
    assert proc.returncode == PREEMPTED, err[-3000:]
    m = re.fullmatch(rf"train preempted by {sig} after step (\d+) of {STEPS}: checkpoint "
                     r"step_(\d+) written; re-run the same command to resume",
                     _preempt_line(err))  # fmt: skip
    assert m and int(m[1]) == int(m[2]), err[-1000:]
    step = int(m[1])
    assert 2 <= step < STEPS and _lines(run / "metrics.jsonl") == step  # every step it logged
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{step:08d}"]
    code = run_cli(_train_args(store, run))[0]
    assert code == 0
    _assert_identical(_result(run), reference)


# ------------------------------------------------------------------------------- 2 ranks (DDP)
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(_free_port()), "-m", "lplkit", *args]  # fmt: skip


def _worker_of_rank(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=`rank` (from /proc)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no worker with RANK={rank} among {children}")


DDP_ENV = {**ENV, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ddp_reference(store, tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp-ref") / "run"
    done = subprocess.run(_torchrun(_train_args(store, run, 12)), env=DDP_ENV, text=True,
                          capture_output=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return _result(run, 12)


def _ddp_trial(store: Path, run: Path, reference, to_launcher: bool) -> None:
    proc = subprocess.Popen(_torchrun(_train_args(store, run, 12)), env=DDP_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def send() -> None:
        pid = proc.pid if to_launcher else _worker_of_rank(proc.pid, 1)
        os.kill(pid, signal.SIGTERM)

    err = _signal_when(proc, lambda: _lines(run / "metrics.jsonl") >= 2, send)
    assert proc.returncode != 0, err[-3000:]  # torchrun reports a stop of its workers as a failure
    if not to_launcher:  # it lists each worker's status: 75 on both (none killed while exiting)
        assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", err)) == {"75"}, err[-3000:]
    lines = [" ".join(x.split()) for x in err.splitlines() if "preempted by" in x]
    steps = {int(m[1]) for x in lines if (m := re.search(r"after step (\d+) of 12", x))}
    assert len(lines) == 2 and len(steps) == 1, err[-3000:]  # both ranks, after the same step
    step = steps.pop()
    if not to_launcher:  # rank 1 got SIGTERM, rank 0 learned it from the all-reduced flag
        assert any("by SIGTERM" in x for x in lines), lines
        assert any("by a stop signal on another rank" in x for x in lines), lines
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{step:08d}"]
    assert _lines(run / "metrics.jsonl") == step < 12
    done = subprocess.run(_torchrun(_train_args(store, run, 12)), env=DDP_ENV, text=True,
                          capture_output=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    _assert_identical(_result(run, 12), reference, 12)


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(store, ddp_reference, tmp_path):
    _ddp_trial(store, tmp_path / "run", ddp_reference, to_launcher=False)


@pytest.mark.slow
def test_sigterm_to_torchrun_reaches_every_rank(store, ddp_reference, tmp_path):
    _ddp_trial(store, tmp_path / "run", ddp_reference, to_launcher=True)


# ------------------------------------------------------------------------------- encode, stats
def _encode_args(dataset: str, out: Path, vae: Path) -> list[str]:
    return ["encode", "--dataset", dataset, "--res", "32", "--vae", str(vae), "--out", str(out),
            "--shard-size", "4", "--batch-size", "3", "--workers", "0", "--flip",
            "--device", "cpu"]  # fmt: skip


def test_sigterm_to_encode_keeps_complete_shards_and_resumes_bitwise(tiny_vae_dir, tmp_path):
    images = write_image_folder(tmp_path / "images", {"a": 12, "b": 12})
    ref = tmp_path / "ref.zarr"
    assert run_cli(_encode_args(str(images), ref, tiny_vae_dir))[0] == 0
    out = tmp_path / "s.zarr"
    args = _encode_args(f"slowfolder:{images}", out, tiny_vae_dir)
    proc = subprocess.Popen([sys.executable, str(SLOW_SOURCE), *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    markers = out / "progress"
    err = _signal_when(proc, lambda: len(list(markers.glob("shard-*.json"))) >= 1,
                       lambda: proc.send_signal(signal.SIGTERM))  # fmt: skip
    assert proc.returncode == PREEMPTED, err[-3000:]
    done = len(list(markers.glob("shard-*.json")))
    assert _preempt_line(err) == (
        f"encode preempted by SIGTERM: {done}/6 shards complete, the shards in flight were "
        "dropped; re-run the same command to resume"
    )
    assert done < 6 and not (out / ".lplkit-lock.json").exists()
    import helpers.slow_source  # noqa: F401  (registers slowfolder: in this process)

    assert run_cli(args)[0] == 0
    got, want = read_store(out), read_store(ref)
    for name in ("moments", "moments_flip", "labels"):
        assert np.array_equal(got[name], want[name]), name
    assert got["index"] == want["index"]


def test_sigterm_in_stats_writes_nothing_and_the_rerun_equals_one_go(
    tiny_vae_dir, tmp_path, monkeypatch, capsys
):
    import lplkit.stats.compute as compute
    from lplkit.stats.storage import load_stats

    ref, url = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    write_stats_store(ref, tiny_vae_dir)
    write_stats_store(url, tiny_vae_dir)
    args = ["--batch-size", "2", "--device", "cpu", "--bins", "64"]
    assert run_cli(["stats", str(ref), *args])[0] == 0
    real, calls = compute.item_latents, []

    def preempted_in_the_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            # a real SIGTERM to this process: only safe with lplkit's handler installed
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(compute, "item_latents", preempted_in_the_second_batch)
    before = signal.getsignal(signal.SIGTERM)
    try:
        code, _, err = run_cli(["stats", str(url), *args], capsys)
        # the library restored the handler; the CLI, exiting after a preemption, ignores more
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code == PREEMPTED, err
    assert _preempt_line(err).startswith("stats preempted by SIGTERM: nothing written"), err
    assert load_stats(str(url)) is None
    monkeypatch.setattr(compute, "item_latents", real)
    assert run_cli(["stats", str(url), *args])[0] == 0
    got, want = load_stats(str(url)), load_stats(str(ref))
    assert torch.equal(got.latent_mean, want.latent_mean)
    assert torch.equal(got.latent_std, want.latent_std)
    assert len(got.layers) == len(want.layers) > 0
    for a, b in zip(got.layers, want.layers, strict=True):
        for field in ("mean", "std", "q_low", "q_high"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
