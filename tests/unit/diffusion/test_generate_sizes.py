"""`lplkit sample --size`: which sizes a run offers (run.json buckets, or a square run's one size)."""

from __future__ import annotations

import pytest

from lplkit.diffusion.generate import run_sizes
from lplkit.errors import ConfigError

SQUARE = {"latent_shape": [4, 32, 32], "store": {"autoencoder": {"downsample_factor": 8}}}
BUCKETED = {
    **SQUARE,
    "latent_shape": [4, 24, 40],
    "buckets": [
        {"id": 0, "size": [320, 192], "latent_shape": [4, 24, 40], "rows": 9, "start": 0},
        {"id": 1, "size": [192, 320], "latent_shape": [4, 40, 24], "rows": 3, "start": 9},
    ],
}


def test_square_run_offers_its_one_size():
    assert run_sizes(SQUARE, None) == [((256, 256), (4, 32, 32))]
    assert run_sizes(SQUARE, ["256x256"]) == [((256, 256), (4, 32, 32))]
    with pytest.raises(ConfigError, match=r"--size 384x192: .* its store has: 256x256$"):
        run_sizes(SQUARE, ["384x192"])


def test_bucketed_run_offers_its_buckets():
    assert run_sizes(BUCKETED, None) == [((320, 192), (4, 24, 40))]  # the default bucket
    got = run_sizes(BUCKETED, ["192x320", "320x192"])
    assert got == [((192, 320), (4, 40, 24)), ((320, 192), (4, 24, 40))]
    with pytest.raises(ConfigError, match="its store has: 320x192, 192x320"):
        run_sizes(BUCKETED, ["256x256"])
    with pytest.raises(ConfigError, match="not WIDTHxHEIGHT"):
        run_sizes(BUCKETED, ["320-192"])
