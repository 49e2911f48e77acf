"""End to end on a real (synthetic-moments) store: `lplkit train` / `lplkit sample`, kill -9 resume,
2-process DDP vs 1 process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.stores import write_exact_store
from safetensors.torch import load_file

from lplkit.train.metrics_log import TIMING_FIELDS, read_metrics

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"


def _ae_info(vae_dir: Path) -> dict:
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder

    return autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir))


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_vae_dir) -> Path:
    from lplkit.store.synthetic import write_synthetic_store

    path = tmp_path_factory.mktemp("store") / "s.zarr"
    write_synthetic_store(path, count=32, latent_shape=(4, 8, 8), num_classes=3,
                          autoencoder=_ae_info(tiny_vae_dir))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def exact_store(tmp_path_factory, tiny_vae_dir) -> Path:
    return write_exact_store(tmp_path_factory.mktemp("exact") / "s.zarr", tiny_vae_dir)


def _cli(*args: str) -> None:
    assert run_cli(list(args))[0] == 0


def _train_args(store: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--store", str(store), "--out", str(out), "--model", "DiT-T/2",
            "--batch-size", "8", "--lr", "1e-3", "--seed", "1", "--device", "cpu", *extra]  # fmt: skip


def _losses(run: Path) -> list[dict]:
    recs = read_metrics(run / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in recs]


def _final_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    d = run / "checkpoints" / f"step_{step:08d}"
    return {
        **load_file(d / "model.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(d / "ema.safetensors").items()},
    }


def test_train_with_lpl_then_sample(store, tmp_path, capsys):
    import jsonschema

    run = tmp_path / "run"
    _cli(*_train_args(store, run, "--steps", "4", "--lpl", "--lpl-depth", "1", "--lpl-snr-min",
                      "0.5", "--log-every", "2", "--ckpt-every", "2", "--json"))  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 4 and summary["images_seen"] == 32
    recs = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in recs] == [2, 4]
    assert all(r["loss"] == pytest.approx(r["loss_diffusion"] + r["loss_lpl"]) for r in recs)
    assert any(r["loss_lpl"] > 0 for r in recs)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lpl"]["enabled"] and cfg["lpl"]["loss"]["depth"] == 1 and cfg["optim"]["lr"] == 1e-3
    jsonschema.validate(json.loads((run / "run.json").read_text()),
                        json.loads((SCHEMAS / "run.schema.json").read_text()))  # fmt: skip
    meta = json.loads((run / "checkpoints" / "step_00000004" / "meta.json").read_text())
    jsonschema.validate(meta, json.loads((SCHEMAS / "checkpoint-state.schema.json").read_text()))

    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        _cli("sample", "--run", str(run), "--n", "3", "--steps", "2", "--seed", seed,
             "--batch-size", "2", "--out", str(tmp_path / name), "--json", "--device", "cpu")  # fmt: skip
        info = json.loads(capsys.readouterr().out)
        assert info["checkpoint_step"] == 4 and info["weights"] == "ema"
        outs.append(np.load(tmp_path / name / "samples.npz")["arr_0"])
    assert outs[0].shape == (3, 32, 32, 3) and outs[0].dtype == np.uint8
    np.testing.assert_array_equal(outs[0], outs[1])  # deterministic for a seed
    assert not np.array_equal(outs[0], outs[2])
    assert (tmp_path / "a" / "grid.png").is_file() and (
        tmp_path / "a" / "images" / "000002.png"
    ).is_file()


def test_rerun_with_other_settings_is_refused(store, tmp_path):
    from lplkit.cli.app import main

    _cli(*_train_args(store, tmp_path / "r", "--steps", "1"))
    with pytest.raises(SystemExit) as exc:
        main(_train_args(store, tmp_path / "r", "--steps", "2", "--objective", "eps"))
    assert exc.value.code == 2  # ConfigError: the run dir holds a different config


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# The default suite kills training in tests/fault/test_train_kill.py (two seeded trials).
@pytest.mark.slow
def test_kill9_then_rerun_is_bitwise_identical(store, tmp_path):
    steps = 40
    args = _train_args(store, tmp_path / "run", "--steps", str(steps), "--ckpt-every", "5",
                       "--log-every", "3", "--lpl", "--lpl-depth", "1", "--lpl-snr-min", "1")  # fmt: skip
    cmd = [sys.executable, "-m", "lplkit", *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (ckpts / "step_00000010").exists():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (ckpts / f"step_{steps:08d}").exists()
    subprocess.run(cmd, env=_env(), check=True, capture_output=True)
    ref = [a.replace(str(tmp_path / "run"), str(tmp_path / "ref")) for a in cmd]
    subprocess.run(ref, env=_env(), check=True, capture_output=True)
    got, want = _final_weights(tmp_path / "run", steps), _final_weights(tmp_path / "ref", steps)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The default suite runs 2 forked gloo ranks with the LPL against 1 process
# (test_train_paths.py) and torchrun's 2-rank launcher in tests/fault/test_preemption.py.
@pytest.mark.slow
def test_two_process_ddp_matches_one_process(exact_store, tmp_path):
    steps = 3
    base = _train_args(exact_store, tmp_path / "one", "--steps", str(steps), "--log-every", "1",
                       "--set", "model.label_dropout=0.3")  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "lplkit", *base], env=_env(), check=True, capture_output=True
    )
    ddp = [a.replace(str(tmp_path / "one"), str(tmp_path / "two")) for a in base]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "lplkit",
            *ddp,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = _final_weights(tmp_path / "one", steps), _final_weights(tmp_path / "two", steps)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    for a, b in zip(l1, l2, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2


def test_train_start_prints_the_latent_normalization(store, tmp_path, tiny_vae_dir, capsys):
    """Which latent space a run trains in is said at start, with its values: the autoencoder's
    factors, and per-channel statistics once `lplkit stats` ran on the store (it switched
    silently before)."""
    import shutil

    sf = float(_ae_info(tiny_vae_dir)["scaling_factor"])
    _cli(*_train_args(store, tmp_path / "a", "--steps", "1"))
    err = capsys.readouterr().err
    assert "latent normalization: the autoencoder's shift_factor/scaling_factor" in err
    assert f"shift 0, scale {sf:.5g}" in err

    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy)
    _cli("stats", str(copy), "--latents-only", "--samples", "0", "--device", "cpu", "--json")
    std = json.loads(capsys.readouterr().out)["latent"]["std"]
    _cli(*_train_args(copy, tmp_path / "b", "--steps", "1"))
    err = capsys.readouterr().err
    scale = "[" + ", ".join(f"{1 / s:.4g}" for s in std) + "]"
    assert "latent normalization: per-channel latent statistics of `lplkit stats`" in err
    assert f"scale {scale}" in err
    recorded = json.loads((tmp_path / "b" / "run.json").read_text())["normalization"]
    assert recorded["source"] == "stats"
    np.testing.assert_allclose(recorded["scale"], [1 / s for s in std], rtol=1e-6)
