"""Checkpoint files: atomic write, verification, fallback past corrupt ones, rotation; EMA math."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from lplkit.errors import CheckpointError
from lplkit.train import checkpoint as ckpt
from lplkit.train.ema import EMA
from lplkit.train.rng import capture_rng_state, derive_seed, restore_rng_state


def _weights(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 2), float(v)), "b": torch.arange(4.0) + v}


def _save(root, step, **kw):
    state = {"step": step, "optimizer": {"state": {0: {"exp_avg": torch.ones(2) * step}}}}
    return ckpt.save_checkpoint(
        root, step, _weights(step), _weights(-step), state, keep_last=kw.get("keep", 5)
    )


def test_roundtrip_and_layout(tmp_path):
    path = _save(tmp_path, 7)
    assert path.name == "step_00000007"
    assert sorted(p.name for p in path.iterdir()) == sorted([*ckpt.FILES, "meta.json"])
    got = ckpt.load_latest(tmp_path)
    assert got.step == 7
    torch.testing.assert_close(got.model["w"], torch.full((3, 2), 7.0), rtol=0, atol=0)
    torch.testing.assert_close(got.ema["b"], torch.arange(4.0) - 7, rtol=0, atol=0)
    assert got.state["optimizer"]["state"][0]["exp_avg"].tolist() == [7.0, 7.0]
    # state.pt must load with weights_only=True (no pickled objects)
    torch.load(path / "state.pt", weights_only=True)


def test_keep_last(tmp_path):
    for s in (1, 2, 3, 4, 5):
        ckpt.save_checkpoint(tmp_path, s, _weights(s), _weights(s), {"step": s}, keep_last=2)
    assert [s for s, _ in ckpt.checkpoint_dirs(tmp_path)] == [4, 5]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_corrupt_latest_falls_back_with_warning(tmp_path, damage):
    _save(tmp_path, 1)
    latest = _save(tmp_path, 2)
    target = latest / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:20])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        (latest / "state.pt").unlink()
    else:
        (latest / "meta.json").write_text("{not json")
    with pytest.warns(UserWarning, match="falling back"):
        got = ckpt.load_latest(tmp_path)
    assert got.step == 1
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint_dir(latest)


def test_partial_write_leftover_is_ignored_and_removed(tmp_path):
    _save(tmp_path, 3)
    partial = tmp_path / ".tmp-step_00000004-999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.load_latest(tmp_path).step == 3
    assert ckpt.remove_partial(tmp_path) == [partial]
    assert not partial.exists()


def test_no_checkpoint_returns_none(tmp_path):
    """None (and no warning) where nothing was saved: a missing directory, an empty one, one with
    only a partial write and look-alike names; the first real checkpoint is then found (a
    `load_latest` that never finds one, e.g. a step-directory pattern that misses, fails)."""
    root = tmp_path / "checkpoints"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.load_latest(root) is None
        root.mkdir()
        assert ckpt.load_latest(root) is None
        (root / ".tmp-step_00000004-999").mkdir()
        (root / "step_4").mkdir()  # not step_ + 8 digits
        (root / "notes.txt").write_text("x")
        assert ckpt.load_latest(root) is None
        _save(root, 3)
        found = ckpt.load_latest(root)
    assert found is not None and found.step == 3
    torch.testing.assert_close(found.model["w"], torch.full((3, 2), 3.0), rtol=0, atol=0)


def test_ema_matches_hand_loop():
    lin = torch.nn.Linear(3, 2)
    ema = EMA(lin, 0.9, warmup=True)
    shadow = {k: v.clone() for k, v in lin.state_dict().items()}
    for k in range(5):
        with torch.no_grad():
            for p in lin.parameters():
                p.add_(0.5 * (k + 1))
        ema.update(lin)
        d = min(0.9, (1 + k) / (10 + k))
        for name, v in lin.state_dict().items():
            shadow[name] = d * shadow[name] + (1 - d) * v
    for name, v in ema.weights().items():
        torch.testing.assert_close(v, shadow[name])
    assert ema.num_updates == 5
    # restoring into a fresh EMA continues the same average (not a restart from the model)
    fresh = EMA(torch.nn.Linear(3, 2), 0.9)
    fresh.load_state_dict(ema.state_dict(), ema.weights())
    assert fresh.num_updates == 5 and fresh.current_decay() == ema.current_decay()
    for name, v in fresh.weights().items():
        assert torch.equal(v, ema.weights()[name])


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expect = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expect[0], got[0])
    np.testing.assert_array_equal(expect[1], got[1])
    assert expect[2] == got[2]


def test_derived_seeds_differ_by_step_stream_rank():
    seeds = {derive_seed(0, s, st, r) for s in range(20) for st in range(4) for r in range(2)}
    assert len(seeds) == 160
    assert derive_seed(5, 3, 1) == derive_seed(5, 3, 1)
