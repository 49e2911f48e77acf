"""Shared fixtures and helpers: tiny random-init autoencoders, generated image folders (no hub, no
network), a store read without lplkit's reader, the CLI in-process, subprocess environments."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
STORE_ARRAYS = ("moments", "moments_flip", "labels")


def read_store(path: Path) -> dict:
    """Everything a local store holds, read with zarr/pyarrow directly (not through lplkit's reader):
    its arrays (those present of STORE_ARRAYS), "index" (rows) and "manifest"."""
    import pyarrow.parquet as pq
    import zarr

    group = zarr.open_group(str(path), mode="r")
    out = {name: np.asarray(group[name][:]) for name in STORE_ARRAYS if name in group}
    out["index"] = pq.read_table(Path(path) / "index.parquet").to_pylist()
    out["manifest"] = dict(group.attrs["lplkit"])
    return out


def run_cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """`lplkit ARGS` in this process: (exit code, stdout, stderr); the output only with `capsys`."""
    from lplkit.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    if capsys is None:
        return int(exc.value.code), "", ""
    out = capsys.readouterr()
    return int(exc.value.code), out.out, out.err


STATS_STORE_N, STATS_STORE_SHARD = 12, 8
STATS_STORE_SKIPPED = {2, 9}  # skipped rows: zeros in the arrays, never used by stats


def write_stats_store(url: Path, vae_dir: Path) -> dict[str, np.ndarray]:
    """A finalized store (flips, STATS_STORE_N positions, STATS_STORE_SKIPPED skipped) of random
    moments for the statistics tests, recorded as encoded by `vae_dir`; returns the moments it wrote
    (zeros at the skipped positions)."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store.synthetic import write_synthetic_store

    rng = np.random.default_rng(0)
    data = {}
    for name in ("moments", "moments_flip"):
        m = rng.standard_normal((STATS_STORE_N, 2, 4, 4, 4)).astype(np.float32) * 2 + 0.5
        m[:, 1] = rng.uniform(0.05, 0.6, (STATS_STORE_N, 4, 4, 4))
        data[name] = m
    written = write_synthetic_store(
        url,
        count=STATS_STORE_N,
        latent_shape=(4, 4, 4),
        flips=True,
        dtype="float32",
        shard_size=STATS_STORE_SHARD,
        skipped=STATS_STORE_SKIPPED,
        num_classes=1,
        autoencoder=autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir)),
        moments=data["moments"],
        moments_flip=data["moments_flip"],
    )
    return {name: written[name] for name in data}


def write_exact_store(path: Path, vae_dir: Path, n: int = 32) -> Path:
    """A finalized store of `n` float32 moments (4, 8, 8) with std > 0, labels p % 3, recorded as
    encoded by `vae_dir`: the loader's draws follow each sample's place in the epoch order, so a
    K-rank run sees the latents of the 1-process run with the same global batch."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store import StoreWriter, new_manifest
    from lplkit.store.synthetic import synthetic_moments

    moments = synthetic_moments(n, (4, 8, 8), seed=5)
    info = autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir))
    manifest = new_manifest(autoencoder=info, resolution=32, latent_shape=(4, 8, 8),
                            source={"id": "exact", "split": "train", "revision": None, "count": n},
                            dtype="float32", shard_size=16, chunk_size=8, codec="none")  # fmt: skip
    labels = (np.arange(n) % 3).astype(np.int32)
    with StoreWriter.create_or_resume(str(path), manifest) as w:
        for s in w.pending_shards():
            lo, hi = w.shard_range(s)
            rows = [{"key": f"k{p}", "status": "ok", "reason": None} for p in range(lo, hi)]
            w.write_shard(s, moments[lo:hi], None, labels[lo:hi], rows)
        w.finalize()
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m lplkit` subprocess whose results are compared bit for bit with
    this process's: the same torch thread count (another count changes the float reduction order of
    the convs), hubs offline, the repository importable."""
    import torch

    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}  # fmt: skip


def make_tiny_vae(seed: int = 0, *, latent_channels: int = 4, post_quant_conv: bool = True):
    """A small AutoencoderKL (f=4: 3 down/up blocks, mid block) with deterministic random weights."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.5,
        use_quant_conv=post_quant_conv,
        use_post_quant_conv=post_quant_conv,
    )
    return vae.eval()


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


def write_image_folder(
    root: Path, classes: dict[str, int], *, seed: int = 0, size=(48, 40)
) -> Path:
    """Class sub-folders of random RGB PNG/JPEG images of varied sizes; returns `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cname, count in classes.items():
        (root / cname).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            w = int(size[0] + rng.integers(0, 24))
            h = int(size[1] + rng.integers(0, 24))
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr).save(root / cname / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three classes (sorted: ant=0, bee=1, cat=2) with 5, 4, 3 images."""
    return write_image_folder(tmp_path / "images", {"cat": 3, "ant": 5, "bee": 4})


def write_hub_cache(hf_home: Path, repo: str, files: dict[str, bytes], commit: str,
                    *, kind: str = "model", ref: str | None = "main") -> Path:  # fmt: skip
    """Put `files` (repo-relative path -> bytes) into the hub cache under `hf_home` as
    `huggingface_hub` lays it out after a download: blobs/<sha256>, snapshots/<commit>/<path> as
    relative symlinks to the blobs, refs/<ref> = commit. Returns the snapshot directory. The layout
    is checked with `huggingface_hub.scan_cache_dir` (the library's own cache reader)."""
    import hashlib

    from huggingface_hub import scan_cache_dir

    cache = hf_home / "hub"
    repo_dir = cache / f"{kind}s--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    for rel, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert commit in {rev.commit_hash for rev in repos[repo].revisions}
    return snapshot
