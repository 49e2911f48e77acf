"""Every ```python block of README.md and docs/*.md runs as written (so a snippet cannot rot).

A block runs with the names it assumes (`vae`, `pred_z0`, a store at "in256.zarr", ...) bound to
tiny stand-ins by its entry in SETUPS, keyed by (file, first line); paths in the text are replaced
by temporary ones. A block that cannot run here says why on the line before its fence:

    <!-- snippet not run: REASON -->

(a signature listing, a GPU, the network). A new block with neither a SETUPS entry nor that marker
fails `test_every_python_block_is_run_or_marked`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers.cli import REPO, run_cli
from helpers.models import make_tiny_vae
from helpers.stores import write_exact_store, write_stats_store

from lplkit.store.synthetic import write_synthetic_store

ROOT = REPO
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!-- snippet not run: (.+?) -->")
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@dataclass
class Block:
    file: str
    line: int
    code: str
    not_run: str | None  # the marker's reason

    @property
    def key(self) -> tuple[str, str]:
        return (self.file, self.code.splitlines()[0])


def python_blocks() -> list[Block]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = NOT_RUN.fullmatch(before.strip())
            out.append(Block(path.name, line, m.group(1), marker.group(1) if marker else None))
    return out


@dataclass
class Setup:
    """Names bound before the block runs, text replaced in it, and a check of its results."""

    scope: dict = field(default_factory=dict)
    replace: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict], bool | None] = lambda scope: None  # asserts, or returns False


def _latents(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(b, 4, 8, 8, generator=g)
    return target + 0.3 * torch.randn(b, 4, 8, 8, generator=g), target


def _lpl_names() -> dict:
    from lplkit.lpl import LatentPerceptualLoss

    pred, target = _latents()
    return {"vae": make_tiny_vae(0), "pred_z0": pred, "target_z0": target, "pred_n": pred * 0.5,
            "target_n": target * 0.5, "scale": 0.5, "shift": 0.1, "idx": torch.tensor([0, 2]),
            "LatentPerceptualLoss": LatentPerceptualLoss}  # fmt: skip


def _store_loop(tmp: Path) -> Setup:
    store = tmp / "s.zarr"
    write_synthetic_store(store, count=300, latent_shape=(4, 4, 4), shard_size=128, chunk_size=16)

    def check(s: dict) -> None:
        assert s["batch"]["latent"].shape == (64, 4, 4, 4)
        assert s["latents"].shape == (256, 4, 4, 4) and len(s["captions"]) == 256

    return Setup(replace={'"in256.zarr"': repr(str(store))}, check=check)


def _readme_lpl(tmp: Path) -> Setup:
    def check(s: dict) -> None:
        assert s["per_sample"].shape == (4,) and (s["per_sample"] > 0).all()

    return Setup(scope=_lpl_names(), check=check)


def _lpl_usage(tmp: Path) -> Setup:
    def check(s: dict) -> None:
        assert s["terms"].shape == (4, 4) and s["per_sample"].shape == (4,)
        assert (s["per_sample"][[1, 3]] == 0).all() and (s["per_sample"][[0, 2]] > 0).all()

    return Setup(scope=_lpl_names(), check=check)


def _base_model(tmp: Path) -> Setup:
    return Setup(check=lambda s: s["base"].normalization is not None)


def _export(tmp: Path) -> Setup:
    vae_dir = tmp / "vae"
    make_tiny_vae(0).save_pretrained(vae_dir)
    store = write_exact_store(tmp / "s.zarr", vae_dir, n=16)
    run, pipe = tmp / "run", tmp / "pipe"
    for args in (["train", "--store", str(store), "--out", str(run), "--model", "DiT-T/2",
                  "--objective", "eps", "--batch-size", "8", "--steps", "1", "--device", "cpu"],
                 ["export", "--run", str(run), "--out", str(pipe)]):  # fmt: skip
        assert run_cli(args)[0] == 0
    return Setup(  # 4 sampler steps for 50: the same calls, a fraction of the time
        replace={
            '"runs/dit-b2/pipeline"': repr(str(pipe)),
            "num_inference_steps=50": "num_inference_steps=4",
        },
        check=lambda s: len(s["images"]) == 3 and s["images"][0].size == (32, 32),
    )


def _objective_api(tmp: Path) -> Setup:
    from lplkit.diffusion.denoisers import build_model

    denoiser = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=3)
    z0, eps = _latents()
    scope = {"B": 4, "generator": torch.Generator().manual_seed(0), "device": "cpu", "z0": z0,
             "eps": eps, "denoiser": denoiser, "labels": torch.tensor([0, 1, 2, 0])}  # fmt: skip
    return Setup(
        scope=scope, check=lambda s: s["loss_B"].shape == (4,) and s["mask"].dtype == torch.bool
    )


def _model_api(tmp: Path) -> Setup:
    z_t, _ = _latents(2)
    scope = {"z_t": z_t, "model_t": torch.tensor([10.0, 500.0]), "labels": torch.tensor([0, 1])}
    # DiT-T/2 at 8x8 instead of DiT-B/2 (130M parameters) at 32x32: the same code, seconds less
    replace = {'"DiT-B/2", in_channels=4, sample_size=32, num_classes=1000':
               '"DiT-T/2", in_channels=4, sample_size=8, num_classes=3'}  # fmt: skip
    return Setup(scope=scope, replace=replace, check=lambda s: s["pred"].shape == (2, 4, 8, 8))


def _register_model(tmp: Path) -> Setup:
    from diffusers import UNet2DModel

    from lplkit.diffusion import denoisers as models

    def check(s: dict) -> None:  # registered (the factory body is a template with `...`)
        assert "MyUNet" in models.list_models()
        del models._REGISTRY["MyUNet"]

    scope = {"register_model": models.register_model, "UNet2DModel": UNet2DModel,
             "Denoiser": models.Denoiser}  # fmt: skip
    return Setup(scope=scope, check=check)


def _sampler_api(tmp: Path) -> Setup:
    from lplkit.diffusion.denoisers import build_model
    from lplkit.diffusion.objectives import build_objective

    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=3).eval()
    scope = {"torch": torch, "model": model, "obj": build_objective("v"), "B": 2, "C": 4, "H": 8,
             "W": 8, "y": torch.tensor([0, 1])}  # fmt: skip
    return Setup(scope=scope, replace={"steps=50": "steps=2"},
                 check=lambda s: s["z0"].shape == (2, 4, 8, 8))  # fmt: skip


def _stats_api(tmp: Path) -> Setup:
    vae_dir = tmp / "vae"
    make_tiny_vae(0).save_pretrained(vae_dir)
    store = tmp / "latents.zarr"
    write_stats_store(store, vae_dir)
    names = _lpl_names()
    scope = {"vae": names["vae"], "LatentPerceptualLoss": names["LatentPerceptualLoss"],
             "pred_n": names["pred_n"], "target_n": names["target_n"]}  # fmt: skip
    replace = {'"latents.zarr"': repr(str(store)), "samples=1024": "samples=8",
               'device="cuda"': 'device="cpu"'}  # fmt: skip
    return Setup(scope=scope, replace=replace, check=lambda s: s["st"].latent_mean.shape == (4,))


def _xarray(tmp: Path) -> Setup:
    vae_dir = tmp / "vae"
    make_tiny_vae(0).save_pretrained(vae_dir)
    store = tmp / "s.zarr"
    write_stats_store(store, vae_dir)
    assert (
        run_cli(["stats", str(store), "--samples", "4", "--depth", "0", "--device", "cpu"])[0] == 0
    )
    import zarr

    run = zarr.open_group(str(store / "stats"), mode="r").attrs["lplkit_stats"]["current"]
    return Setup(scope={"run": run}, replace={'"in256.zarr"': repr(str(store))},
                 check=lambda s: s["mean"].shape[0] == 12)  # fmt: skip


def _writer_protocol(tmp: Path) -> Setup:
    import types

    import numpy as np

    from lplkit.store import StoreWriter, new_manifest

    ae = {"id": "doc", "class": "AutoencoderKL", "config_hash": "0"}
    manifest = new_manifest(autoencoder=ae, resolution=32, latent_shape=(4, 8, 8),
                            source={"id": "doc", "split": "train", "revision": None, "count": 8},
                            dtype="float32", shard_size=8, chunk_size=8, codec="none")  # fmt: skip
    moments = np.random.default_rng(0).standard_normal((8, 2, 4, 8, 8)).astype(np.float32)
    moments[:, 1] = 0.1
    scope = {"StoreWriter": StoreWriter, "url": str(tmp / "w.zarr"), "manifest": manifest, "r": 0,
             "k": 1, "moments": moments, "moments_flip": None,
             "labels": np.zeros(8, np.int32), "dist": types.SimpleNamespace(barrier=lambda: None),
             "rows": [{"key": f"k{p}", "status": "ok", "reason": None} for p in range(8)]}  # fmt: skip

    def check(s: dict) -> None:
        from lplkit.store import LatentStore

        assert len(LatentStore.open(str(tmp / "w.zarr"))) == 8

    return Setup(scope=scope, check=check)


SETUPS: dict[tuple[str, str], Callable[[Path], Setup]] = {
    ("README.md", "from torch.utils.data import DataLoader"): _store_loop,
    ("README.md", "from lplkit.lpl import LatentPerceptualLoss"): _readme_lpl,
    ("lpl.md", "from lplkit.lpl import LatentPerceptualLoss"): _lpl_usage,
    ("base-model.md", "from lplkit.train.base import load_base"): _base_model,
    ("export.md", "import torch"): _export,
    ("objectives.md", "from lplkit.diffusion.objectives import build_objective"): _objective_api,
    ("objectives.md", "from lplkit.diffusion.denoisers import build_model, list_models, register_model"): _model_api,
    ("objectives.md", '@register_model("MyUNet")'): _register_model,
    ("objectives.md", "from lplkit.diffusion.image_files import save_grid, save_npz, to_uint8"): _sampler_api,
    ("stats.md", "from lplkit.stats.job import run_stats        # what the CLI calls"): _stats_api,
    ("store-format.md", "import xarray as xr"): _xarray,
    ("store-format.md", "w = StoreWriter.create_or_resume(url, manifest, rank=r, world_size=k)"): _writer_protocol,
}  # fmt: skip

BLOCKS = python_blocks()
RUN = [b for b in BLOCKS if b.not_run is None]


def test_every_python_block_is_run_or_marked():
    assert len(BLOCKS) >= 15  # the parser finds the blocks
    unknown = [f"{b.file}:{b.line}" for b in RUN if b.key not in SETUPS]
    assert not unknown, f"python blocks with neither a SETUPS entry nor a not-run marker: {unknown}"
    stale = set(SETUPS) - {b.key for b in RUN}
    assert not stale, f"SETUPS entries for blocks that are gone or marked not run: {stale}"
    for b in BLOCKS:
        assert b.not_run is None or len(b.not_run.split()) >= 2, f"{b.file}:{b.line}: give a reason"


@pytest.mark.parametrize("block", RUN, ids=lambda b: f"{b.file}:{b.line}")
def test_python_block_runs(block, tmp_path):
    if block.key not in SETUPS:
        pytest.fail(f"{block.file}:{block.line} has no SETUPS entry (see the module docstring)")
    setup = SETUPS[block.key](tmp_path)
    code = block.code
    for old, new in setup.replace.items():
        assert old in code, f"{old!r} is no longer in {block.file}:{block.line}"
        code = code.replace(old, new)
    scope = dict(setup.scope)
    exec(compile(code, f"{block.file}:{block.line}", "exec"), scope)
    assert setup.check(scope) is not False, f"{block.file}:{block.line} gave other results"
