"""The stale-cache bug class: the autoencoder a store names (a local dir or a bundled name) is
retrained after the encode. Its config is unchanged, only its weights differ. Stats, training (LPL,
sample grids) and evaluation must refuse to decode that store with the new weights, naming the fix;
an explicit --vae override only warns."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers.models import make_tiny_vae

from lplkit.encode import EncodeConfig, encode_dataset
from lplkit.errors import StoreMismatchError
from lplkit.metrics.image_sets import open_store_images
from lplkit.store import LatentStore
from lplkit.train.builders import load_decoder_vae
from lplkit.train.config import TrainConfig


@pytest.fixture
def stale_store(tmp_path, image_folder, tiny_vae_dir):
    """A store encoded with a copy of the tiny AE whose weights are then replaced (same config)."""
    ae_dir = tmp_path / "ae"
    shutil.copytree(tiny_vae_dir, ae_dir)
    out = tmp_path / "s.zarr"
    encode_dataset(EncodeConfig(dataset=str(image_folder), out=str(out), res=32, vae=str(ae_dir),
                                workers=0, device="cpu"))  # fmt: skip
    make_tiny_vae(seed=7).save_pretrained(ae_dir)  # "retrained": same config, new weights
    return out, ae_dir


def test_eval_refuses_to_decode_with_retrained_weights(stale_store):
    out, _ = stale_store
    with pytest.raises(StoreMismatchError, match=r"weights_hash.*re-encode the reference store"):
        open_store_images(str(out))


def test_train_refuses_the_stores_retrained_autoencoder(stale_store):
    out, _ = stale_store
    manifest = LatentStore.open(str(out)).manifest
    with pytest.raises(StoreMismatchError, match=r"weights_hash.*re-encode the store"):
        load_decoder_vae(TrainConfig(store=str(out)), manifest, torch.device("cpu"))


def test_explicit_vae_override_only_warns(stale_store):
    out, ae_dir = stale_store
    manifest = LatentStore.open(str(out)).manifest
    cfg = TrainConfig(store=str(out))
    cfg.lpl.vae = str(ae_dir)
    with pytest.warns(UserWarning, match="--vae was given explicitly"):
        vae = load_decoder_vae(cfg, manifest, torch.device("cpu"))
    assert not any(p.requires_grad for p in vae.parameters())
