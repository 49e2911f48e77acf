"""Item selection and latent draws of `lplkit stats`, against hand-built expectations."""

from __future__ import annotations

import numpy as np
import pytest

from lplkit.stats.compute import StoreStats, item_latents, select_items


def test_population_includes_flipped_copies_and_sampling_is_seeded() -> None:
    ok = np.array([0, 1, 3, 6])
    every = select_items(ok, flips=True, samples=None, seed=0)
    assert every.tolist() == [[p, f] for p in (0, 1, 3, 6) for f in (0, 1)]
    assert select_items(ok, flips=False, samples=100, seed=0).tolist() == [[p, 0] for p in ok]
    a = select_items(ok, flips=True, samples=5, seed=7)
    b = select_items(ok, flips=True, samples=5, seed=7)
    assert np.array_equal(a, b) and len({tuple(r) for r in a.tolist()}) == 5  # no repeats
    assert {tuple(r) for r in a.tolist()} <= {tuple(r) for r in every.tolist()}
    assert not np.array_equal(a, select_items(ok, flips=True, samples=5, seed=8))


class _FakeStore:
    """Moments from a dict; records the reads (the store's `read` contract)."""

    def __init__(self, moments: np.ndarray, flipped: np.ndarray) -> None:
        self.arrays = {False: moments, True: flipped}

    def read(self, indices, flip=False):
        m = self.arrays[flip][np.asarray(indices)]
        return m[:, 0], m[:, 1]


def test_item_latents_follow_the_documented_noise_rule_in_any_batching() -> None:
    rng = np.random.default_rng(0)
    moments = rng.standard_normal((5, 2, 3, 2, 2)).astype(np.float32)
    flipped = rng.standard_normal((5, 2, 3, 2, 2)).astype(np.float32)
    moments[:, 1] = np.abs(moments[:, 1])
    flipped[:, 1] = np.abs(flipped[:, 1])
    store = _FakeStore(moments, flipped)
    items = np.array([[0, 0], [0, 1], [2, 1], [4, 0]])
    z = item_latents(store, items, seed=9).numpy()
    for row, (pos, flip) in enumerate(items.tolist()):
        m = (flipped if flip else moments)[pos]
        eps = np.random.default_rng([9, pos, flip]).standard_normal((3, 2, 2), dtype=np.float32)
        np.testing.assert_array_equal(z[row], m[0] + m[1] * eps)
    halves = np.concatenate(
        [item_latents(store, items[:1], seed=9), item_latents(store, items[1:], seed=9)]
    )
    np.testing.assert_array_equal(halves, z)


def test_global_scaling_factor_pools_channels() -> None:
    import torch

    rng = np.random.default_rng(1)
    z = (
        rng.standard_normal((50, 3, 4, 4)) * np.array([1.0, 2.0, 0.5])[None, :, None, None]
        + np.array([0.0, 1.0, -2.0])[None, :, None, None]
    )
    flat = np.moveaxis(z, 1, 0).reshape(3, -1)
    st = StoreStats(
        torch.from_numpy(flat.mean(1)), torch.from_numpy(flat.std(1)), flat.shape[1], []
    )
    assert st.scaling_factor == pytest.approx(1 / z.std(), rel=1e-12)
    assert st.shift_factor == pytest.approx(z.mean(), rel=1e-12)
    np.testing.assert_allclose(st.latent_scale.numpy(), 1 / flat.std(1))
