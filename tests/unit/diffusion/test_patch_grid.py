"""Denoisers on non-square latent grids: DiT's output vs a hand unpatchify of diffusers' own tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DiTTransformer2DModel

from lplkit.diffusion.denoisers import build_model, wrap_diffusers
from lplkit.diffusion.patch_grid import base_sample_size, check_grid
from lplkit.errors import ConfigError


class _Stop(Exception):
    pass


def _hand_dit(model, z, t, y):
    """The oracle: a stock DiTTransformer2DModel (same weights, no lplkit hooks) run up to its
    output tokens, unpatchified by hand for the real (h/p, w/p) grid."""
    net = DiTTransformer2DModel.from_config(model.net.config)
    net.load_state_dict(model.net.state_dict())
    net.eval()
    seen = {}

    def grab(mod, args, out):
        seen["tokens"] = out
        raise _Stop

    net.proj_out_2.register_forward_hook(grab)
    with pytest.raises(_Stop), torch.no_grad():
        net(z, t, class_labels=y, return_dict=False)
    p, c = net.config.patch_size, net.config.out_channels
    b, _, h, w = z.shape
    x = seen["tokens"].reshape(b, h // p, w // p, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


@pytest.mark.parametrize("hw", [(8, 16), (4, 16), (16, 4), (6, 8), (8, 8)])
def test_dit_any_grid_equals_hand_unpatchify(hw):
    """(4, 16) was the silent case: 16 tokens made diffusers return an 8x8 output."""
    torch.manual_seed(0)
    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=3).eval()
    z = torch.randn(2, 4, *hw)
    t, y = torch.tensor([3, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        got = model(z, t, y)
    assert got.shape == z.shape
    torch.testing.assert_close(got, _hand_dit(model, z, t, y), rtol=1e-5, atol=1e-6)


def test_square_input_is_the_stock_forward_and_hooks_survive_copy():
    torch.manual_seed(0)
    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=3).eval()
    stock = DiTTransformer2DModel.from_config(model.net.config)
    stock.load_state_dict(model.net.state_dict())
    z, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 9]), torch.tensor([1, 3])
    with torch.no_grad():
        torch.testing.assert_close(
            model(z, t, y), stock(z, t, class_labels=y).sample, rtol=0, atol=0
        )
        ema = copy.deepcopy(model)  # the EMA copy: its hooks must act on the copy itself
        zw = torch.randn(2, 4, 4, 16)
        torch.testing.assert_close(ema(zw, t, y), model(zw, t, y), rtol=0, atol=0)
        assert ema(zw, t, y).shape == zw.shape


def test_wrapped_checkpoint_runs_non_square_and_gradients_flow():
    torch.manual_seed(1)
    net = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                out_channels=8, num_layers=1, sample_size=8,
                                num_embeds_ada_norm=5)  # fmt: skip
    model = wrap_diffusers(net, name="ckpt", num_classes=5)
    z = torch.randn(2, 4, 4, 12, requires_grad=True)
    out = model(z, torch.tensor([1, 2]), torch.tensor([0, 4]))
    assert out.shape == z.shape  # learned sigma: the eps half, at the input's grid
    out.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_unet_runs_non_square():
    torch.manual_seed(0)
    model = build_model("UNet-T", in_channels=4, sample_size=8, num_classes=2).eval()
    z = torch.randn(2, 4, 8, 16)
    with torch.no_grad():
        got = model(z, torch.tensor([1, 2]), torch.tensor([0, 1]))
        want = model.net(z, torch.tensor([1, 2]), class_labels=torch.tensor([0, 1])).sample
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_base_sample_size_and_grid_check():
    assert base_sample_size([(8, 8)], 2) == 8
    assert base_sample_size([(6, 10), (8, 8), (10, 6)], 2) == 8  # isqrt(64)
    assert base_sample_size([(6, 12), (12, 6)], 2) == 8  # isqrt(72) = 8
    assert base_sample_size([(6, 12)], 4) == 8
    check_grid("DiT-T/2", 6, 12, 2)
    with pytest.raises(ConfigError, match="divisible by 4, got 6x12 \\(h x w\\)"):
        check_grid("UNet-S", 6, 12, 4)


TEXT = {"tokens": 6, "states_dim": 16, "pooled_dim": 12}


def _text(b=2):
    g = torch.Generator().manual_seed(3)
    return {
        "states": torch.randn(b, 6, 16, generator=g),
        "mask": torch.ones(b, 6),
        "pooled": torch.randn(b, 12, generator=g),
    }


@pytest.mark.parametrize("name", ["PixArt-T/2", "MMDiT-T/2", "UNetText-T"])
def test_text_models_run_at_both_aspects_as_the_direct_diffusers_call(name):
    """The Denoiser passes any grid through unchanged: its output is the diffusers model's own.
    MMDiT is built with the longest side (its crop table must cover it: lplkit.train.builders)."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=4, sample_size=16, text=TEXT).eval()
    for hw in ((8, 16), (16, 8)):
        z, t, c = torch.randn(2, 4, *hw), torch.tensor([3, 500]), _text()
        with torch.no_grad():
            got = model(z, t, text=c)
            if name.startswith("PixArt"):
                want = model.net(z, encoder_hidden_states=c["states"], timestep=t,
                                 added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                                 encoder_attention_mask=c["mask"]).sample  # fmt: skip
            elif name.startswith("MMDiT"):
                want = model.net(z, encoder_hidden_states=c["states"],
                                 pooled_projections=c["pooled"], timestep=t).sample  # fmt: skip
            else:
                want = model.net(z, t, encoder_hidden_states=c["states"],
                                 encoder_attention_mask=c["mask"]).sample  # fmt: skip
        assert got.shape == z.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_mmdit_needs_its_position_table_to_cover_the_longest_side():
    model = build_model("MMDiT-T/2", in_channels=4, sample_size=8, text=TEXT).eval()
    with pytest.raises(ValueError, match="pos_embed_max_size"), torch.no_grad():
        model(torch.randn(1, 4, 8, 16), torch.tensor([1]), text=_text(1))
