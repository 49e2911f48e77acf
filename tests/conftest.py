"""Shared fixtures: tiny random-init autoencoders, generated image folders, damageable store copies
(no hub, no network). Helper functions live in tests/helpers/."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.images import write_image_folder
from helpers.models import make_tiny_vae

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A tiny AutoencoderKL saved with save_pretrained (loadable like any local diffusers model)."""
    path = tmp_path_factory.mktemp("tiny_vae")
    make_tiny_vae(0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vae_info(tiny_vae_dir) -> dict:
    """`autoencoder_info` of the tiny VAE: the manifest entry of a store 'encoded' with it."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder

    return autoencoder_info(load_autoencoder(str(tiny_vae_dir)), str(tiny_vae_dir))


@pytest.fixture(scope="session")
def other_vae_dir(tmp_path_factory) -> Path:
    """A second tiny AutoencoderKL with different weights (for stale-cache refusal tests)."""
    path = tmp_path_factory.mktemp("other_vae")
    make_tiny_vae(1).save_pretrained(path)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three classes (sorted: ant=0, bee=1, cat=2) with 5, 4, 3 images."""
    return write_image_folder(tmp_path / "images", {"cat": 3, "ant": 5, "bee": 4})


@pytest.fixture(scope="session")
def damageable_store(tmp_path_factory) -> Callable[..., Path]:
    """`damageable_store(dest, **kwargs)`: a fresh copy at `dest` of the synthetic store
    `write_synthetic_store(**kwargs)` writes; each distinct store is written once per session."""
    from lplkit.store.synthetic import write_synthetic_store

    pristine: dict[str, Path] = {}

    def copy(dest: Path, **kwargs) -> Path:
        key = json.dumps(kwargs, sort_keys=True, default=repr)
        if key not in pristine:
            path = tmp_path_factory.mktemp("pristine") / "s.zarr"
            write_synthetic_store(path, **kwargs)
            pristine[key] = path
        shutil.copytree(pristine[key], dest)
        return dest

    return copy


@pytest.fixture(scope="session")
def text_encoder_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny text encoders saved with save_pretrained: "clip", "clip2" (with projection), "t5"."""
    from helpers.text_stores import encoder_dirs

    return encoder_dirs(tmp_path_factory.mktemp("text-encoders"))


@pytest.fixture(scope="session")
def text_store(tmp_path_factory, tiny_vae_dir, text_encoder_dirs) -> Callable[..., Path]:
    """`text_store(*names, labels=True)`: a captioned 16-row store caching the tiny encoders
    `names` (helpers.text_stores.write_text_store); each distinct store is written once per session
    (the trainer only reads it)."""
    from helpers.text_stores import write_text_store

    made: dict[tuple, Path] = {}

    def get(*names: str, labels: bool = True) -> Path:
        key = (names, labels)
        if key not in made:
            path = tmp_path_factory.mktemp("text-store") / "s.zarr"
            encoders = {n: text_encoder_dirs[n] for n in names}
            made[key] = write_text_store(path, tiny_vae_dir, encoders, labels=labels)
        return made[key]

    return get
