"""Export pieces against diffusers: the folded autoencoder, the DiT label table, the refusals."""

from __future__ import annotations

import pytest
import torch
from helpers.models import make_tiny_vae

from lplkit.diffusion.denoisers import build_model
from lplkit.errors import ConfigError
from lplkit.export import DIT_NULL_CLASS, _export_transformer, fold_normalization

SHIFT = [0.5, -1.0, 2.0, 0.0]
SCALE = [2.0, 0.25, 1.5, 4.0]


@pytest.mark.parametrize("post_quant_conv", [True, False])
def test_folded_vae_decodes_normalized_latents(post_quant_conv):
    vae = make_tiny_vae(3, post_quant_conv=post_quant_conv)
    folded = fold_normalization(vae, SHIFT, SCALE)
    assert folded.config.scaling_factor == 1.0 and folded.config.shift_factor is None
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    m = torch.tensor(SHIFT).view(1, -1, 1, 1)
    s = torch.tensor(SCALE).view(1, -1, 1, 1)
    with torch.no_grad():
        want = vae.decode(z / s + m).sample  # what lplkit sample decodes
        got = folded.decode(z).sample
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        x = torch.rand(2, 3, 32, 32) * 2 - 1
        raw, enc = vae.encode(x).latent_dist, folded.encode(x).latent_dist
        torch.testing.assert_close(enc.mean, (raw.mean - m) * s, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc.std, raw.std * s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_classes", [3, None])
def test_label_table_puts_the_null_class_at_1000(num_classes):
    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=num_classes).eval()
    for p in model.parameters():  # the zero-initialized adaLN would hide the labels
        torch.nn.init.normal_(p, std=0.2)
    net = _export_transformer(model)
    assert net.config.num_embeds_ada_norm == DIT_NULL_CLASS
    z = torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 900])
    with torch.no_grad():
        if num_classes:
            y = torch.tensor([0, 2, 1])
            torch.testing.assert_close(net(z, t, class_labels=y).sample, model(z, t, y))
        null = torch.full((3,), DIT_NULL_CLASS)
        torch.testing.assert_close(net(z, t, class_labels=null).sample, model(z, t, None))


def test_non_dit_model_is_refused_in_one_line():
    model = build_model("UNet-T", in_channels=4, sample_size=8, num_classes=3)
    with pytest.raises(ConfigError, match="not a DiT") as exc:
        _export_transformer(model)
    assert "\n" not in str(exc.value)


def test_more_than_1000_classes_is_refused():
    with torch.device("meta"):
        model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=1001)
    with pytest.raises(ConfigError, match="at most 1000"):
        _export_transformer(model)


def test_id2label_falls_back_to_numbers_with_a_note(tmp_path):
    from lplkit.export import _class_names
    from lplkit.store.synthetic import write_synthetic_store

    write_synthetic_store(tmp_path / "s.zarr", count=8, latent_shape=(4, 4, 4), num_classes=3)
    labels, notes = _class_names({"store": {"url": str(tmp_path / "s.zarr")}}, 3)
    assert labels == {"0": "0", "1": "1", "2": "2"} and "records no class names" in notes[0]
    labels, notes = _class_names({"store": {"url": str(tmp_path / "gone.zarr")}}, 2)
    assert labels == {"0": "0", "1": "1"} and "could not be opened" in notes[0]
    assert _class_names({"store": {"url": "x"}}, None) == ({}, [])


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_flow_scheduler_walks_lplkits_euler_grid_at_any_step_count(steps):
    """The exported flow scheduler, driven as DiTPipeline drives it (set_timesteps, then step with
    the model's velocity), equals Euler on t_i = 1 - i/S written out here, for every S."""
    from types import SimpleNamespace

    from lplkit.export import _scheduler

    sched = _scheduler(SimpleNamespace(objective=SimpleNamespace(kind="flow")), 50)
    assert hasattr(sched, "scale_model_input")
    sched.set_timesteps(steps)
    grid = [1 - i / steps for i in range(steps + 1)]
    assert torch.allclose(
        sched.timesteps.double(), 1000 * torch.tensor(grid[:-1], dtype=torch.float64)
    )
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 4, 4, generator=g)
    velocities = torch.randn(steps, 2, 4, 4, 4, generator=g)
    ref = z.clone()
    for i, t in enumerate(sched.timesteps):
        z = sched.step(velocities[i], t, sched.scale_model_input(z, t)).prev_sample
        ref = ref - (grid[i] - grid[i + 1]) * velocities[i]
    torch.testing.assert_close(z, ref)
