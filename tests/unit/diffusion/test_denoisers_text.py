"""The registered text-to-image denoisers against diffusers called directly, the way its pipelines
call them (PixArtSigmaPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline + the mask), on a
net built from the same config and weights; plus the architecture numbers of the size table."""

from __future__ import annotations

import pytest
import torch

from lplkit.diffusion.denoisers import build_model, is_text_model
from lplkit.errors import ConfigError

B, C, S, L, D, P = 3, 4, 8, 6, 24, 20


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, C, S, S, generator=g)
    t = torch.tensor([3.0, 400.0, 975.0])
    states = torch.randn(B, L, D, generator=g)  # padding positions hold nonzero states too
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool
    )
    pooled = torch.randn(B, P, generator=g)
    return z, t, {"states": states, "mask": mask, "pooled": pooled}


def _twin(model):
    """The same diffusers class from the same config, loaded with the same weights."""
    net = type(model.net).from_config(model.net.config)
    net.load_state_dict(model.net.state_dict())
    return net.eval()


def _build(name: str, pooled: bool = True):
    torch.manual_seed(0)
    dims = {"tokens": L, "states_dim": D, "pooled_dim": P if pooled else None}
    model = build_model(name, in_channels=C, sample_size=S, text=dims).eval()
    # diffusers zero-initialises some output layers; random weights make every input matter
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@torch.no_grad()
def test_pixart_equals_the_pixart_sigma_pipeline_call():
    model = _build("PixArt-T/2")
    z, t, text = _inputs()
    got = model(z, t, text=text)
    net = _twin(model)
    want = net(z, encoder_hidden_states=text["states"], encoder_attention_mask=text["mask"],
               timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
               return_dict=False)[0]  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    cfg = net.config  # the size table's T row (depth 2, hidden 64, 2 heads), patch 2
    assert (cfg.num_layers, cfg.num_attention_heads * cfg.attention_head_dim) == (2, 64)
    assert (cfg.patch_size, cfg.caption_channels, cfg.out_channels) == (2, D, C)
    # the mask matters: without it (or with another one) the output differs
    unmasked = net(z, encoder_hidden_states=text["states"], timestep=t,
                   added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]  # fmt: skip
    assert not torch.allclose(got, unmasked, atol=1e-4)


@torch.no_grad()
def test_mmdit_equals_the_sd3_pipeline_call():
    model = _build("MMDiT-T/2")
    z, t, text = _inputs(1)
    got = model(z, t, text=text)
    net = _twin(model)
    want = net(hidden_states=z, timestep=t, encoder_hidden_states=text["states"],
               pooled_projections=text["pooled"], return_dict=False)[0]  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    cfg = net.config
    assert (cfg.num_layers, cfg.num_attention_heads * cfg.attention_head_dim) == (2, 64)
    assert (cfg.joint_attention_dim, cfg.pooled_projection_dim, cfg.patch_size) == (D, P, 2)
    # SD3 takes no mask; the pooled vector matters
    other = dict(text, pooled=text["pooled"].flip(0))
    assert not torch.allclose(model(z, t, text=other), got, atol=1e-4)
    no_mask = {k: v for k, v in text.items() if k != "mask"}
    torch.testing.assert_close(model(z, t, text=no_mask), got, rtol=0, atol=0)


@torch.no_grad()
def test_unet_text_equals_unet2dcondition_with_the_mask():
    model = _build("UNetText-T", pooled=False)
    z, t, text = _inputs(2)
    got = model(z, t, text=text)
    net = _twin(model)
    want = net(z, t, encoder_hidden_states=text["states"], encoder_attention_mask=text["mask"],
               return_dict=False)[0]  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert net.config.cross_attention_dim == D and tuple(net.config.block_out_channels) == (32, 64)
    unmasked = net(z, t, encoder_hidden_states=text["states"], return_dict=False)[0]
    assert not torch.allclose(got, unmasked, atol=1e-4)


def test_text_models_refuse_what_they_cannot_read():
    assert is_text_model("MMDiT-S/2") and is_text_model("UNetText-S")
    assert not is_text_model("DiT-S/2")
    with pytest.raises(ConfigError, match="pooled text vector"):
        build_model("MMDiT-T/2", in_channels=C, sample_size=S,
                    text={"tokens": L, "states_dim": D, "pooled_dim": None})  # fmt: skip
    with pytest.raises(ConfigError, match="needs text encoder dimensions"):
        build_model("PixArt-T/2", in_channels=C, sample_size=S)
    with pytest.raises(ConfigError, match="takes no text conditioning"):
        build_model("DiT-T/2", in_channels=C, sample_size=S, text={"tokens": L, "states_dim": D})
    model = _build("PixArt-T/2")
    with pytest.raises(ConfigError, match="needs text conditioning"):
        model(torch.zeros(1, C, S, S), torch.tensor([1.0]))
