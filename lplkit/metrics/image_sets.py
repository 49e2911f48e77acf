"""Image sets to evaluate: a folder of PNG/JPEG, an ADM-style `.npz`, or a latent store (decoded).

Every set gives `len()` and `read(indices) -> uint8 (n, H, W, 3)`; `select()` picks which images a
run uses. ADM reference batches (`.npz` with `mu`/`sigma`) also carry precomputed FID statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lplkit.errors import ConfigError, EvaluationError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageSet(Protocol):
    name: str

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> np.ndarray: ...


def _as_rgb_nhwc(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.dtype != np.uint8:
        raise EvaluationError(
            f"{name}: expected uint8 images (N, H, W, 3) (ADM/FID-tool format), "
            f"got {arr.dtype} {arr.shape}"
        )
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


class FolderImages:
    """Every image file under `root` (recursively, sorted by relative path), converted to RGB."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.name = str(root)
        self.files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise EvaluationError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images found")
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def read(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = []
        for i in indices:
            path = self.files[int(i)]
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im.convert("RGB"))
            except OSError as exc:
                raise EvaluationError(f"{path}: cannot decode image ({exc})") from exc
            if self._size is None:
                self._size = arr.shape[:2]
            elif arr.shape[:2] != self._size:
                raise EvaluationError(
                    f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from "
                    f"{self._size[1]}x{self._size[0]}; resize/crop the set to one size first"
                )
            out.append(arr)
        return np.stack(out)


class NpzImages:
    """`arr_0` uint8 NHWC images and/or precomputed FID statistics `mu`, `sigma` (ADM batches)."""

    def __init__(self, path: str | Path) -> None:
        self.name = str(path)
        try:
            data = np.load(path)  # allow_pickle=False: object arrays raise ValueError on access
            files = set(data.files)
            arr_0 = data["arr_0"] if "arr_0" in files else None
            mu_sigma = (data["mu"], data["sigma"]) if {"mu", "sigma"} <= files else None
        except (OSError, ValueError, EOFError) as exc:
            detail = " ".join(str(exc).split())
            raise EvaluationError(
                f"{path}: not a readable .npz of numeric arrays ({type(exc).__name__}: {detail})"
            ) from None
        self.images = _as_rgb_nhwc(arr_0, self.name) if arr_0 is not None else None
        self.fid_stats: tuple[np.ndarray, np.ndarray] | None = None
        if mu_sigma is not None:
            if any(not np.issubdtype(a.dtype, np.number) for a in mu_sigma):
                raise EvaluationError(f"{path}: 'mu'/'sigma' are not numeric arrays")
            self.fid_stats = (mu_sigma[0].astype(np.float64), mu_sigma[1].astype(np.float64))
        if self.images is None and self.fid_stats is None:
            raise EvaluationError(f"{path}: has neither 'arr_0' images nor 'mu'/'sigma' statistics")

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)

    def read(self, indices: np.ndarray) -> np.ndarray:
        if self.images is None:
            raise EvaluationError(f"{self.name}: holds only FID statistics, no images ('arr_0')")
        return self.images[np.asarray(indices)]


class StoreImages:
    """A latent store's `ok` samples decoded by its autoencoder from the stored posterior means."""

    def __init__(self, store: Any, vae: Any, *, name: str, device: str = "cpu") -> None:
        self.store, self.vae, self.name, self.device = store, vae, name, device
        self.positions = np.asarray(store.ok_positions)

    def __len__(self) -> int:
        return len(self.positions)

    def read(self, indices: np.ndarray) -> np.ndarray:
        import torch

        mean, _ = self.store.read(self.positions[np.asarray(indices)])
        with torch.no_grad():
            z = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=self.device)
            out = self.vae.decode(z)
            x = out.sample if hasattr(out, "sample") else out[0]
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()


def _is_store(spec: str) -> bool:
    p = Path(spec)
    return "://" in spec or p.suffix == ".zarr" or (p / "zarr.json").is_file()


def open_store_images(spec: str, *, device: str = "cpu") -> StoreImages:
    """Open a latent store and the autoencoder named in its manifest (raw latents are decoded as is)."""
    try:
        from lplkit.autoencoders.loading import (
            autoencoder_info,
            check_store_autoencoder,
            load_autoencoder,
        )
        from lplkit.store import LatentStore
    except ImportError as exc:
        raise EvaluationError(f"{spec}: reading latent stores needs lplkit.store ({exc})") from exc
    store = LatentStore.open(spec)
    ae = store.manifest.get("autoencoder", {})
    if not ae.get("id"):
        raise EvaluationError(f"{spec}: the store manifest names no autoencoder to decode with")
    vae = load_autoencoder(
        ae["id"], subfolder=ae.get("subfolder"), device=device, revision=ae.get("revision")
    )
    if ae.get("config_hash") not in (None, "0"):  # synthetic stores record no real autoencoder
        check_store_autoencoder(
            store.manifest, autoencoder_info(vae, ae["id"], ae.get("subfolder")), spec,
            fix="its latents would decode to wrong images: re-encode the reference store",
        )  # fmt: skip
    return StoreImages(store, vae, name=spec, device=device)


def open_image_set(spec: str | Path, *, device: str = "cpu") -> ImageSet:
    """Folder / `.npz` / latent store, chosen from what `spec` is on disk."""
    spec = str(spec)
    if spec.endswith(".npz"):
        if not Path(spec).is_file():
            raise EvaluationError(f"{spec}: no such .npz file")
        return NpzImages(spec)
    if _is_store(spec):
        return open_store_images(spec, device=device)
    if Path(spec).is_dir():
        return FolderImages(spec)
    raise EvaluationError(f"{spec}: not an image folder, .npz or latent store")


def select(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded random subset of `n` (sorted): stores/folders are often class-ordered."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))
